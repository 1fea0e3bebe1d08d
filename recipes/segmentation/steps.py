"""One training epoch and one validation pass, with the optional mechanics of the trainer.

Mixed precision: bf16 autocast needs nothing else; fp16 autocast needs a GradScaler, since
float16 gradients underflow. Gradient accumulation divides each batch's loss by N and steps
the optimizer every N batches (and at the end of the epoch), so the update matches a batch
N times larger. Clipping acts on the unscaled gradients, i.e. in the units the threshold
was chosen in.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.checkpoint import Progress
from recipes.components.metrics import SegMetrics, voxel_spacing
from recipes.components.optim import Schedule
from recipes.components.slices import build_inferer, slice_axis_of

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(Exception):
    """The loss became NaN/inf; the message says where."""


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """bf16/fp16 autocast (CPU or CUDA), or nothing for fp32."""
    if amp in AMP_DTYPES:
        return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
    if amp == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"training.amp must be bf16, fp16 or fp32, got {amp!r}")


def _plain(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # MetaTensor tracks metadata through every op; the training math does not need it.
    return (x.as_tensor() if isinstance(x, MetaTensor) else x).to(device, non_blocking=True)


def _float(output: Any) -> Any:
    """The network output in fp32 (a tensor, or deep supervision's list of tensors)."""
    if isinstance(output, (list, tuple)):
        return [o.float() for o in output]
    return output.float()


def optimizer_steps_per_epoch(batches: int, accumulate: int) -> int:
    return -(-batches // max(1, accumulate))


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    schedule: Schedule,
    device: torch.device,
    tcfg: DictConfig,
    epoch: int,
    progress: Progress,
    scaler: torch.amp.GradScaler,
) -> tuple[float, int, float]:
    """One pass over the training patches; returns (mean loss, patches seen, last lr)."""
    model.train()
    accumulate = max(1, int(tcfg.get("accumulate_steps", 1)))
    clip = tcfg.get("grad_clip_norm")
    total_loss, patches, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader, start=1):
        image, label = _plain(batch["image"], device), _plain(batch["label"], device)
        if hasattr(loss_fn, "inner") and hasattr(loss_fn.inner, "set_step"):
            loss_fn.inner.set_step(progress.global_step)  # per-term loss warm-up
        with autocast(device, tcfg.amp):
            logits = model(image)
        loss = loss_fn(_float(logits), label)  # the loss itself in fp32 for stable reductions
        if not torch.isfinite(loss):
            # Before the optimizer step: last.pt keeps the last good weights.
            raise Diverged(f"loss became {loss.item()} at epoch {epoch} step {step}")
        scaler.scale(loss / accumulate).backward()
        total_loss += loss.item()
        patches += image.shape[0]
        if step % accumulate and step != len(loader):
            continue
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        lr = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if schedule.interval == "step":
            schedule.scheduler.step()
        progress.global_step += 1
    return total_loss / max(1, len(loader)), patches, lr


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    cfg: DictConfig,
    inferer: Inferer | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-foreground-class Dice over whole validation volumes, plus ``val_hd95`` /
    ``val_surface_dice`` when ``training.metrics`` asks for them.

    ``inferer``: a 3D sliding window, or slice by slice for 2D models (``slices.py``); by
    default the one the config asks for.
    """
    model.eval()
    if inferer is None:
        inferer = build_inferer(cfg.training, slice_axis_of(cfg))
    metrics = SegMetrics(cfg.data.num_classes, cfg.training.get("metrics"))
    for batch in loader:
        image, label = _plain(batch["image"], device), _plain(batch["label"], device)
        with autocast(device, cfg.training.amp):
            logits = inferer(image, model)
        metrics(logits, label, voxel_spacing(batch["image"]))
    return metrics.aggregate()
