"""Parts 1, 2 and 4: training steps of the segmentation recipe on the GPU.

1. BF16 autocast against FP32: step time and peak memory, SegResNet, DynUNet (nnU-Net's
   plan) and MedNeXt-B at a study patch (128³, 2 patches a step).
2. Gradient checkpointing on against off, same models, BF16 (the GPU setting): peak memory,
   step time, and the bytes autograd saves (deterministic, ``saved_tensor_bytes``).
4. DynUNet throughput at 4×128³, batch 4, BF16, against NVIDIA's published figure.

``--tiny`` runs the same code on the CPU with the tiny model sizes and 16³ patches, and
records the CUDA-only figures (peak memory) as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.common import Row
from bench.gpu.harness import Ctx, Deadline, PartRecord, item
from bench.gpu.recipe import (
    StepFigures,
    build_trainee,
    measure,
    recipe_kernels,
    seg_config,
    synthetic_batch,
)

MODELS = ("segresnet", "dynunet", "mednext")

# NVIDIA DeepLearningExamples, PyTorch/Segmentation/nnUNet README, "Training performance:
# NVIDIA DGX A100 (8x A100 80G)": 3D, 1 GPU, batch 4, mixed precision 29.96 img/s of
# 4x128^3 (MSD BrainTumour) = 62.8 M voxels/s (TF32: 12.22 img/s).
NVIDIA_DYNUNET_VOXELS_S = 29.96 * 128**3
NVIDIA_SOURCE = (
    "NVIDIA DeepLearningExamples nnU-Net (PyTorch) README, training performance, DGX A100 "
    "80G, 3D, 1 GPU, batch 4, mixed precision: 29.96 volumes/s of 4×128³"
)


@dataclass(frozen=True)
class Shape:
    side: int
    batch: int
    warmup: int
    steps: int


def study(ctx: Ctx) -> Shape:
    return Shape(16, 1, 1, ctx.timed(1)) if ctx.tiny else Shape(128, 2, 2, ctx.timed(5))


def _amp_gpu(ctx: Ctx) -> str:
    """The setting the GPU study trains with; FP32 on the CPU (the recipe's CPU default)."""
    return "bf16" if ctx.cuda else "fp32"


def figures(
    ctx: Ctx, dl: Deadline, model: str, amp: str, gc: bool, shape: Shape, extra: tuple = ()
) -> StepFigures:
    """One configuration's steps, measured once per run and shared between parts."""
    key = (model, amp, gc, shape, extra)
    if key not in ctx.cache:
        what = f"{model} {amp}" + (" grad checkpointing" if gc else "")
        dl.require(what)
        cfg = seg_config(model, shape.side, amp, ctx.tiny, extra)

        def build() -> tuple[Any, dict[str, torch.Tensor]]:
            return build_trainee(cfg, ctx.device, gc), synthetic_batch(cfg, shape.batch, ctx.device)

        with recipe_kernels(ctx.device, amp):
            ctx.cache[key] = measure(build, shape.warmup, shape.steps, dl, what)
    return ctx.cache[key]


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s >= 0.01 else f"{s * 1e3:.2f} ms"


def _gib(x: float | None) -> str:
    return "n/a (CPU)" if x is None else f"{x:.2f} GiB"


def _pair_rows(
    label: str, new: StepFigures, base: StepFigures, names: tuple[str, str]
) -> list[Row]:
    """Time and memory rows for ``new`` against ``base`` (measured in this run)."""
    t = new.step_s / base.step_s
    values = {names[0]: new.as_dict(), names[1]: base.as_dict()}
    rows = [
        Row(
            f"{label}: step time",
            _ms(new.step_s),
            _ms(base.step_s),
            f"{t:.2f}×",
            "—",
            None,
            f"median of {new.steps} steps after warm-up; {names[0]} vs {names[1]}",
            values,
        )
    ]
    if new.peak_gib is not None and base.peak_gib is not None:
        m = new.peak_gib / base.peak_gib
        rows.append(
            Row(
                f"{label}: peak memory",
                _gib(new.peak_gib),
                _gib(base.peak_gib),
                f"{m:.2f}×",
                "< 1×",
                m < 1,
                "torch.cuda.max_memory_allocated over the steps (weights, optimizer state, "
                "batch, activations)",
                values,
            )
        )
    return rows


def _measured(rec: PartRecord, name: str, fn: Any) -> StepFigures | None:
    out: list[StepFigures] = []
    with item(rec, name):
        out.append(fn())
    return out[0] if out else None


def _out_of_memory(rec: PartRecord, name: str) -> bool:
    return any(s["item"] == name and "out of memory" in s["reason"] for s in rec.skipped)


def bf16_step(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    shape = study(ctx)
    for model in MODELS:
        got = {
            amp: _measured(
                rec, f"{model} {amp}", lambda a=amp, m=model: figures(ctx, dl, m, a, False, shape)
            )
            for amp in ("fp32", "bf16")
        }
        label = f"BF16 vs FP32, {model} {shape.side}³×{shape.batch}"
        if got["fp32"] and got["bf16"]:
            rec.rows += _pair_rows(label, got["bf16"], got["fp32"], ("bf16", "fp32"))
        elif got["bf16"] and _out_of_memory(rec, f"{model} fp32"):
            b = got["bf16"]
            rec.rows.append(
                Row(
                    f"{label}: fits only in BF16",
                    f"{_ms(b.step_s)}, {_gib(b.peak_gib)}",
                    "FP32: CUDA out of memory",
                    "—",
                    "—",
                    None,
                    "the FP32 step ran out of memory (see the part's reasons); BF16 trains",
                    {"bf16": b.as_dict()},
                )
            )
    if not ctx.cuda:
        rec.skip("peak memory", "no CUDA device")
    rec.details["shape"] = shape.__dict__


def grad_checkpointing(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    shape, amp = study(ctx), _amp_gpu(ctx)
    for model in MODELS:
        # "off" is part 1's BF16 (FP32 on a CPU) measurement when that ran: the same steps.
        off = _measured(rec, f"{model} off", lambda m=model: figures(ctx, dl, m, amp, False, shape))
        on = _measured(rec, f"{model} on", lambda m=model: figures(ctx, dl, m, amp, True, shape))
        if not (on and off):
            continue
        label = f"Grad checkpointing on vs off, {model} {shape.side}³×{shape.batch} {amp}"
        rec.rows += _pair_rows(label, on, off, ("on", "off"))
        r = on.saved_gib / off.saved_gib
        rec.rows.append(
            Row(
                f"{label}: saved activations",
                _gib(on.saved_gib),
                _gib(off.saved_gib),
                f"{r:.2f}×",
                "< 0.9×",
                r < 0.9,
                "bytes autograd keeps for backward in one step (saved_tensors_hooks; "
                "deterministic, what checkpointing acts on)",
                {"on_gib": on.saved_gib, "off_gib": off.saved_gib},
            )
        )
    if not ctx.cuda:
        rec.skip("peak memory", "no CUDA device")
    rec.details |= {"shape": shape.__dict__, "amp": amp}


def dynunet_throughput(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    shape = Shape(16, 4, 1, ctx.timed(1)) if ctx.tiny else Shape(128, 4, 3, ctx.timed(10))
    # MSD BrainTumour's 4 channels and 4 labels, as NVIDIA's benchmark trains.
    extra = ("data.in_channels=4", "data.num_classes=4")
    amp = _amp_gpu(ctx)  # a CPU's BF16 convolutions are emulated: FP32 there
    fig = _measured(rec, "dynunet", lambda: figures(ctx, dl, "dynunet", amp, False, shape, extra))
    if fig is None:
        return
    voxels = shape.batch * shape.side**3 / fig.step_s
    ratio = voxels / NVIDIA_DYNUNET_VOXELS_S
    note = (
        f"{shape.batch} patches of 4×{shape.side}³ per step, {amp.upper()}, nnU-Net-planned "
        f"DynUNet (deep supervision, DiceCE); step {_ms(fig.step_s)}. Anchor: {NVIDIA_SOURCE} "
        "(FP16 with channels-last and fused instance norm, their own loop): a different GPU "
        "and stack, so the ratio places the recipe's step, it does not rank the two"
    )
    if ctx.tiny:
        note = "tiny model and patch on the CPU: not comparable with the anchor; " + note
    rec.rows.append(
        Row(
            f"DynUNet 4×{shape.side}³ batch {shape.batch} {amp.upper()}: voxels/s",
            f"{voxels / 1e6:.2f} M/s",
            f"{NVIDIA_DYNUNET_VOXELS_S / 1e6:.1f} M/s (A100-80G)",
            f"{ratio:.2f}×",
            "—",
            None,
            note,
            {
                **fig.as_dict(),
                "voxels_per_s": voxels,
                "anchor_voxels_per_s": NVIDIA_DYNUNET_VOXELS_S,
            },
        )
    )
