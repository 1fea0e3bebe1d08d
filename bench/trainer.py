"""Benchmark 2: the recipe's training step against a bare PyTorch + MONAI loop.

The recipe side is the trainer's real code path, ``train_one_epoch`` (MetaTensor unwrap,
device move, autocast, fp32 loss, finiteness check, zero_grad/backward/step, per-step LR
schedule, ``loss.item()``), fed a list of batches from the recipe's DataLoader so that data
loading is left out on both sides. The bare side is the loop anyone would write: to(device),
forward, loss, ``loss.backward(); opt.step()``. Same model class, weights, loss, optimizer
and batches; alternating blocks of N steps in one process; medians.

A second comparison swaps the network for a 1x1x1 convolution on 8^3 crops: the compute all
but vanishes, so the difference between the two loops is the trainer's own per-step cost,
measurable to microseconds even on a busy machine, and projected onto the real step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from bench.common import Options, Outcome, Row, fmt_s, interleave, median
from bench.workbench import Workbench, loader_batches, workbench


def bare_steps(
    model: nn.Module,
    loss_fn: nn.Module,
    opt: Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    bf16: bool,
) -> None:
    model.train()
    for image, label in batches:
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(image)
        loss = loss_fn(logits.float(), label)
        loss.backward()
        opt.step()


def setup(
    wb: Workbench,
    make_model: Callable[[], nn.Module] | None,
    batches: list[dict[str, Any]],
) -> tuple[Callable[[], None], Callable[[], None], str]:
    """Two closures running ``len(batches)`` steps each: the trainer's epoch function and
    the bare loop, on twin models (``make_model``, default the config's network)."""
    from recipes.components.models.build import build_model
    from recipes.components.training.checkpoint import Progress
    from recipes.components.training.losses import build_loss
    from recipes.components.training.optim import build_optimizer, build_scheduler
    from recipes.segmentation.train import Trainee, train_one_epoch

    def parts() -> tuple[nn.Module, nn.Module, Optimizer]:
        torch.manual_seed(wb.cfg.seed)
        model = (make_model or (lambda: build_model(wb.cfg.model)))().to(wb.device)
        loss_fn = build_loss(wb.cfg.loss, wb.cfg.data.num_classes).to(wb.device)
        return model, loss_fn, build_optimizer(wb.cfg.optimizer, model.parameters())

    r_model, r_loss, r_opt = parts()
    # A schedule long enough never to run out, stepped per step as configured.
    schedule = build_scheduler(wb.cfg.scheduler, r_opt, len(batches), 100_000)
    progress = Progress()
    # The recipe's own scaler: a no-op unless training.amp is fp16.
    scaler = torch.amp.GradScaler(wb.device.type, enabled=wb.cfg.training.amp == "fp16")
    trainee = Trainee(r_model, r_loss, r_opt, schedule, scaler, wb.device, wb.cfg.training)
    b_model, b_loss, b_opt = parts()
    b_model.load_state_dict(copy.deepcopy(r_model.state_dict()))  # same starting weights
    plain = [(b["image"].as_tensor(), b["label"].as_tensor()) for b in batches]
    bf16 = wb.amp == "bf16"

    def recipe() -> None:
        train_one_epoch(trainee, batches, 1, progress)

    def bare() -> None:
        bare_steps(b_model, b_loss, b_opt, plain, wb.device, bf16)

    return recipe, bare, type(r_model).__name__


def compare(
    wb: Workbench,
    make_model: Callable[[], nn.Module] | None,
    batches: list[dict[str, Any]],
    repeats: int,
) -> dict[str, Any]:
    """Interleaved blocks of ``len(batches)`` steps: the trainer's epoch function vs bare."""
    recipe, bare, model = setup(wb, make_model, batches)
    t_recipe, t_bare = interleave(recipe, bare, repeats)
    n = len(batches)
    return {
        "model": model,
        "steps_per_block": n,
        "recipe_step_s": median(t_recipe) / n,
        "bare_step_s": median(t_bare) / n,
        "paired_ratio": median([r / b for r, b in zip(t_recipe, t_bare, strict=True)]),
        "min_ratio": min(t_recipe) / min(t_bare),
        "recipe_blocks_s": t_recipe,
        "bare_blocks_s": t_bare,
    }


def tiny_batches(wb: Workbench, n: int, side: int = 8) -> list[dict[str, Any]]:
    crop = (slice(None), slice(None), slice(0, side), slice(0, side), slice(0, side))
    return [{k: b[k][crop] for k in ("image", "label")} for b in loader_batches(wb, n)]


def run(opts: Options) -> Outcome:
    wb = workbench(opts.quick, opts.smoke)
    steps, repeats = (2, 2) if opts.smoke else (3, 3) if opts.quick else (3, 6)
    real = compare(wb, None, loader_batches(wb, steps), repeats)
    in_ch, classes = wb.cfg.data.in_channels, wb.cfg.data.num_classes
    tiny = compare(
        wb,
        lambda: nn.Conv3d(in_ch, classes, kernel_size=1),
        tiny_batches(wb, 4 if opts.smoke else 20 if opts.quick else 50),
        2 if opts.smoke else 6 if opts.quick else 12,
    )
    overhead = tiny["recipe_step_s"] - tiny["bare_step_s"]
    projected = 1 + overhead / real["bare_step_s"]
    shape = f"{wb.patches_per_step} patches of {list(wb.cfg.training.patch_size)}, {wb.amp}"
    rows = [
        Row(
            "Trainer step vs bare PyTorch+MONAI loop",
            fmt_s(real["recipe_step_s"]),
            fmt_s(real["bare_step_s"]),
            f"{real['paired_ratio']:.3f}×",
            "≤ 1.03×",
            real["paired_ratio"] <= 1.03,
            f"{real['model']}, {shape}; {repeats} interleaved blocks of {steps} steps per "
            f"side; ratio = median of paired block ratios (fastest blocks: "
            f"{real['min_ratio']:.3f}×)",
            real,
        ),
        Row(
            "Trainer per-step cost (1×1×1 conv), projected",
            f"+{fmt_s(overhead)}/step",
            fmt_s(real["bare_step_s"]),
            f"{projected:.4f}×",
            "≤ 1.03×",
            projected <= 1.03,
            f"recipe {fmt_s(tiny['recipe_step_s'])} vs bare {fmt_s(tiny['bare_step_s'])} per "
            "tiny step; the difference over the real bare step",
            {**tiny, "overhead_s": overhead, "projected_ratio": projected},
        ),
    ]
    return Outcome(rows, {"real": real, "tiny": tiny})
