"""Benchmark: the diffusion recipe's validation sampling in BF16 against FP32, and its
training step against a bare MONAI diffusion loop.

Sampling: the recipe's DDIM loop (``components/diffusion/sampling.py``) with MedSegDiff 16c
on a batch of windows, under BF16 autocast and without, each configuration in a fresh
process so that its peak memory is its own: ``torch.cuda.max_memory_allocated`` on a GPU;
on a CPU the peak of bytes held by tensors (the profiler's allocation events; the peak RSS
added is noted), with a fixed mmap threshold so that RSS follows tensors (see
``bench/checkpointing.py``). The children set up as the recipe does, so on a CPU BF16 runs
with oneDNN off (``avoid_onednn_bf16_backward``): ATen's convolutions are ~20x slower and
keep larger scratch buffers, so the CPU's memory ratio is taken against FP32 on the same
ATen kernels, and the recipe's own CPU pairing is reported beside it.

Training step: the recipe's ``train_step`` (noise and timesteps from a per-step seeded
generator, ``DiffusionInferer``, fp32 loss, the x_0 diagnostics, one host copy, finiteness
check, optimizer and schedule step) against the loop of MONAI's tutorial (``randn_like``,
``randint``, ``DiffusionInferer``, MSE, backward, step, ``loss.item()``): same model class
and weights, same batches of slices from the recipe's loader, alternating blocks, medians.
As in ``bench/trainer.py``, the same comparison with a 1x1 convolution for a network
measures the trainer's own per-step cost precisely, projected onto the real step.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bench.common import (
    REPO,
    Options,
    Outcome,
    Row,
    demo_root,
    fmt_s,
    interleave,
    median,
    run_children,
    times,
)

CHILD = r"""
import json, resource, sys, time
import torch
from hydra import compose, initialize_config_dir
from recipes.diffusion import CONFIG_DIR, CONFIG_NAME
from recipes.components.diffusion.models import build_denoiser
from recipes.components.diffusion.noise import build_schedulers
from recipes.components.diffusion.sampling import sample
from recipes.components.training.setup import avoid_onednn_bf16_backward

amp, size, batch, steps, repeats = sys.argv[1], *map(int, sys.argv[2:6])
kernels = sys.argv[6]  # "recipe": set up as the recipe does; "aten": oneDNN off either way
with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
    cfg = compose(CONFIG_NAME, [f"training.patch_size=[{size},{size}]",
                                f"diffusion.sampling_steps={steps}"])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
avoid_onednn_bf16_backward(device, amp)
if kernels == "aten":
    torch.backends.mkldnn.enabled = False
torch.manual_seed(0)
net, mode = build_denoiser(cfg.model)
net = net.to(device).eval()
_, sampler = build_schedulers(cfg.diffusion)
image = torch.randn(batch, cfg.data.in_channels, size, size, device=device)

def run():
    generator = torch.Generator(device=device).manual_seed(0)
    return sample(net, mode, sampler, image, amp, generator)

def peak_allocated_mib():
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:
        return None
    now = top = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()
        top = max(top, now)
    return top / 2**20

base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
warmup = 1 if device.type == "cuda" else 0  # CPU: no allocator or autotuner to warm
for i in range(repeats + warmup):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if i >= warmup:
        times.append(time.perf_counter() - t)
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
    alloc = peak
else:
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    alloc = peak_allocated_mib()
print(json.dumps({"sample_s": sorted(times)[len(times) // 2], "peak_mib": peak,
                  "alloc_mib": alloc}))
"""


def _sampling(
    configs: list[tuple[str, str]], size: int, batch: int, steps: int, repeats: int, smoke: bool
) -> list[dict[str, float]]:
    """Each ``(amp, kernels)`` configuration in a fresh process (a smoke run: in one)."""
    env = {
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),
    }
    shape = [str(size), str(batch), str(steps), str(repeats)]
    children = [(CHILD, [amp, *shape, kernels]) for amp, kernels in configs]
    return [json.loads(line) for line in run_children(children, env, together=smoke)]


def _cfg(model: str, size: int, smoke: bool = False) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from recipes.diffusion import CONFIG_DIR, CONFIG_NAME

    amp = "bf16" if torch.cuda.is_available() else "fp32"
    overrides = [
        f"data.root={demo_root(smoke)}",
        f"model={model}",
        f"training.patch_size=[{size},{size}]",
        "training.batch_size=4",
        "training.samples_per_volume=4",
        f"training.amp={amp}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides)


class PointDenoiser(nn.Module):
    """A 1x1 convolution over [x_t, image] (MONAI's concat mode): next to no compute, so the
    gap between the two loops is the trainer's own per-step cost."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.conv(x)


def _step_closures(cfg: DictConfig, n: int, point: bool = False) -> tuple[Any, Any, str, int]:
    """The recipe's ``train_step`` and the bare loop over the same ``n`` batches, on twin
    networks (the config's, or a :class:`PointDenoiser` with ``point``)."""
    from monai.inferers import DiffusionInferer

    from recipes.components.data.loaders import build_data
    from recipes.components.data.slices import slice_axis_of
    from recipes.components.diffusion.losses import build_diffusion_loss
    from recipes.components.diffusion.models import build_denoiser
    from recipes.components.diffusion.noise import build_schedulers
    from recipes.components.training.optim import build_optimizer, build_scheduler
    from recipes.components.training.setup import avoid_onednn_bf16_backward, resolve_device
    from recipes.components.training.step import autocast
    from recipes.diffusion.train import Trainee, train_step

    device = resolve_device("auto")
    avoid_onednn_bf16_backward(device, cfg.training.amp)
    data = build_data(cfg.data, cfg.training, cfg.seed, cfg.augmentation, slice_axis_of(cfg))
    data.set_epoch(1)
    loaded = list(data.train_loader)
    batches = [loaded[i % len(loaded)] for i in range(n)]
    torch.manual_seed(0)
    if point:
        r_net, mode = PointDenoiser(int(cfg.data.in_channels) + 1), "concat"
    else:
        r_net, mode = build_denoiser(cfg.model)
    r_net = r_net.to(device)
    b_net = copy.deepcopy(r_net)  # same starting weights
    noise_sched, _ = build_schedulers(cfg.diffusion)
    r_opt, b_opt = build_optimizer(cfg.optimizer, r_net), build_optimizer(cfg.optimizer, b_net)
    schedule = build_scheduler(cfg.scheduler, r_opt, 1, 1_000_000)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss_fn = build_diffusion_loss(cfg.loss)
    trainee = Trainee(
        r_net, mode, noise_sched, loss_fn, r_opt, schedule, scaler, device, cfg.training, 0
    )
    inferer = DiffusionInferer(build_schedulers(cfg.diffusion)[0])
    plain = [(b["image"].as_tensor(), b["label"].as_tensor()) for b in batches]
    amp, steps = cfg.training.amp, int(cfg.diffusion.timesteps)

    def recipe() -> None:
        for i, batch in enumerate(batches, start=1):
            train_step(trainee, batch, i)

    def bare() -> None:
        b_net.train()
        for image, label in plain:
            image, label = image.to(device), label.to(device)
            x0 = (label > 0).float() * 2 - 1
            noise = torch.randn_like(x0)
            t = torch.randint(0, steps, (x0.shape[0],), device=device)
            b_opt.zero_grad(set_to_none=True)
            with autocast(device, amp):
                pred = inferer(x0, b_net, noise, t, condition=image, mode=mode)
            loss = F.mse_loss(pred.float(), noise)
            loss.backward()
            b_opt.step()
            loss.item()  # what every loop logs

    return recipe, bare, type(r_net).__name__, int(plain[0][0].shape[0])


def run(opts: Options) -> Outcome:
    gpu = torch.cuda.is_available()
    # Sampling: the group's 256^2 windows, 64 at once, 50 DDIM steps on a GPU. A CPU gets a
    # smaller problem, still large enough that activations, not weights, set the peak; one
    # timed run, since CPU BF16 without oneDNN (as the recipe runs it) is ~20x slower.
    if opts.smoke:
        size, batch, steps, repeats = 32, 1, 2, 1
    elif gpu:
        size, batch, steps, repeats = 256, 64, 50, 3
    else:
        size, batch, steps, repeats = (96, 4, 2, 1) if opts.quick else (128, 8, 2, 1)
    # On a CPU also FP32 on ATen's kernels (oneDNN off), as BF16 runs (see below).
    configs = [("fp32", "recipe"), ("bf16", "recipe")] + ([] if gpu else [("fp32", "aten")])
    fp32, bf16, *aten = _sampling(configs, size, batch, steps, repeats, opts.smoke)
    shape = f"medsegdiff_16c, {batch} windows of {size}², DDIM {steps} steps"
    rows = [
        Row(
            "Diffusion sampling BF16 vs FP32: time",
            fmt_s(bf16["sample_s"]),
            fmt_s(fp32["sample_s"]),
            times(bf16["sample_s"], fp32["sample_s"]),
            "< 1× on GPU",
            bf16["sample_s"] < fp32["sample_s"] if gpu else None,
            shape
            + ("" if gpu else "; CPU: BF16 without oneDNN, as the recipe sets up; informational"),
            {"fp32": fp32, "bf16": bf16},
        )
    ]
    if gpu:
        same, key, unit = fp32, "peak_mib", "CUDA max allocated"
    else:
        # The recipe turns oneDNN off for CPU BF16 (its backward kernels), and ATen's
        # convolutions keep larger scratch buffers: FP32 on the same kernels isolates the
        # dtype's effect, the recipe's own pairing follows as its own row.
        same, key = aten[0], "alloc_mib"
        unit = "CPU peak of bytes held by tensors, oneDNN off on both sides"
    rows.append(
        Row(
            "Diffusion sampling BF16 vs FP32: peak memory",
            f"{bf16[key]:.0f} MiB",
            f"{same[key]:.0f} MiB",
            times(bf16[key], same[key]),
            "< 1×",
            bf16[key] < same[key],
            f"{unit}; {shape}",
            {"fp32": same, "bf16": bf16},
        )
    )
    if not gpu:
        rows.append(
            Row(
                "Diffusion sampling BF16 vs FP32: peak memory as the recipe runs on CPU",
                f"{bf16[key]:.0f} MiB",
                f"{fp32[key]:.0f} MiB",
                times(bf16[key], fp32[key]),
                "—",
                None,
                f"FP32 with oneDNN, BF16 without; peak RSS added {bf16['peak_mib']:.0f} vs "
                f"{fp32['peak_mib']:.0f} MiB; informational",
                {"fp32": fp32, "bf16": bf16},
            )
        )

    model, side = ("medsegdiff_16c", 48) if (gpu or not opts.quick) else ("medsegdiff_tiny", 32)
    n, block_repeats = (2, 1) if opts.smoke else (3, 4) if opts.quick else (4, 8)
    if opts.smoke:
        model, side = "medsegdiff_tiny", 16
    cfg = _cfg(model, side, opts.smoke)
    recipe, bare, net_name, slices = _step_closures(cfg, n)
    t_recipe, t_bare = interleave(recipe, bare, block_repeats)
    ratio = median([r / b for r, b in zip(t_recipe, t_bare, strict=True)])
    bare_step = median(t_bare) / n
    # The same with a 1x1 conv: the per-step cost of the trainer, measurable to microseconds
    # on a busy machine where the real blocks vary by several %, projected onto the real step.
    n_point, point_repeats = (4, 1) if opts.smoke else (10, 6) if opts.quick else (20, 12)
    recipe_p, bare_p, _, _ = _step_closures(cfg, n_point, point=True)
    p_recipe, p_bare = interleave(recipe_p, bare_p, point_repeats)
    overhead = (median(p_recipe) - median(p_bare)) / n_point
    projected = 1 + overhead / bare_step
    rows += [
        Row(
            "Diffusion trainer step vs bare MONAI diffusion loop",
            fmt_s(median(t_recipe) / n),
            fmt_s(bare_step),
            f"{ratio:.3f}×",
            "≤ 1.03× on GPU",
            ratio <= 1.03 if gpu else None,
            f"{net_name} ({model}), {slices} slices of {side}² per step; {block_repeats} "
            f"interleaved blocks of {n} steps per side; ratio = median of paired block ratios "
            f"(fastest blocks: {min(t_recipe) / min(t_bare):.3f}×). On a shared CPU two "
            "copies of one loop differ by up to ~10 % this way: the row below is the figure",
            {"recipe_blocks_s": t_recipe, "bare_blocks_s": t_bare, "paired_ratio": ratio},
        ),
        Row(
            "Diffusion trainer per-step cost (1×1 conv), projected",
            f"+{fmt_s(overhead)}/step",
            fmt_s(bare_step),
            f"{projected:.4f}×",
            "≤ 1.03×",
            projected <= 1.03,
            f"recipe {fmt_s(median(p_recipe) / n_point)} vs bare {fmt_s(median(p_bare) / n_point)}"
            " per 1×1-conv step (seeded noise, x_0 diagnostics, one host copy, schedule); the "
            "difference over the real bare step",
            {"recipe_blocks_s": p_recipe, "bare_blocks_s": p_bare, "overhead_s": overhead},
        ),
    ]
    return Outcome(rows, {"sampling": {"fp32": fp32, "bf16": bf16}})
