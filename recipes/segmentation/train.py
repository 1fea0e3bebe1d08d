"""The segmentation recipe, readable top to bottom: setup, the epoch loop, cleanup.

``train(cfg, ctx)`` seeds, builds data/model/loss/optimizer/schedule from the Hydra config,
resumes from ``last.pt`` when present, then runs epochs of patch-based training with
sliding-window validation over whole volumes (mean foreground Dice; slice by slice for the
2D variant, ``dims=2d``), checkpointing and MLflow logging. A NaN or infinite loss stops the
run at once with status "diverged". Optional, all from ``cfg.training``: an LR range test
first (``find_lr``), fp16 with a GradScaler, gradient clipping and accumulation, early
stopping, HD95 / surface Dice.

Gradient accumulation divides each batch's loss by N and steps the optimizer every N batches
(and at the end of the epoch), so the update matches a batch N times larger. Clipping acts on
the unscaled gradients, i.e. in the units the threshold was chosen in.

Under a runner (``ctx`` given) it logs into the runner's MLflow run and leaves ending it to the
runner; standalone (``python -m recipes.segmentation``) it creates and ends its own run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.data.loaders import DataBundle, build_data, split_record
from recipes.components.data.slices import build_inferer, slice_axis_of
from recipes.components.models.build import apply_grad_checkpointing, build_model
from recipes.components.training.checkpoint import (
    BEST,
    LAST,
    Progress,
    load_checkpoint,
    save_checkpoint,
)
from recipes.components.training.early_stopping import early_stop_reason
from recipes.components.training.losses import build_loss
from recipes.components.training.lr_finder import find_lr
from recipes.components.training.metrics import SegMetrics, voxel_spacing
from recipes.components.training.mlflow_logging import RunLogger, flatten_config
from recipes.components.training.optim import Schedule, build_optimizer, build_scheduler
from recipes.components.training.setup import (
    avoid_onednn_bf16_backward,
    checkpoint_dir,
    describe_device,
    resolve_device,
    seed_everything,
    standalone_run_name,
)
from recipes.components.training.step import (
    Diverged,
    as_float,
    autocast,
    on_device,
    optimizer_steps_per_epoch,
)
from recipes.contract import RunContext, TrainResult

__all__ = ["Diverged", "Trainee", "autocast", "train", "train_one_epoch", "validate"]

log = logging.getLogger(__name__)


@dataclass
class Trainee:
    """What one optimisation step touches: the model and everything that updates it."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    device: torch.device
    tcfg: DictConfig


def train_one_epoch(
    t: Trainee, loader: Any, epoch: int, progress: Progress
) -> tuple[float, int, float]:
    """One pass over the training patches; returns (mean loss, patches seen, last lr)."""
    t.model.train()
    accumulate = max(1, int(t.tcfg.get("accumulate_steps", 1)))
    clip = t.tcfg.get("grad_clip_norm")
    total_loss, patches, lr = 0.0, 0, t.optimizer.param_groups[0]["lr"]
    t.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader, start=1):
        image, label = on_device(batch["image"], t.device), on_device(batch["label"], t.device)
        if hasattr(t.loss_fn, "inner") and hasattr(t.loss_fn.inner, "set_step"):
            t.loss_fn.inner.set_step(progress.global_step)  # per-term loss warm-up
        with autocast(t.device, t.tcfg.amp):
            logits = t.model(image)
        loss = t.loss_fn(as_float(logits), label)  # the loss in fp32 for stable reductions
        if not torch.isfinite(loss):
            # Before the optimizer step: last.pt keeps the last good weights.
            raise Diverged(f"loss became {loss.item()} at epoch {epoch} step {step}")
        t.scaler.scale(loss / accumulate).backward()
        total_loss += loss.item()
        patches += image.shape[0]
        if step % accumulate and step != len(loader):
            continue
        if clip:
            t.scaler.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), float(clip))
        lr = t.optimizer.param_groups[0]["lr"]
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.optimizer.zero_grad(set_to_none=True)
        if t.schedule.interval == "step":
            t.schedule.scheduler.step()
        progress.global_step += 1
    return total_loss / max(1, len(loader)), patches, lr


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    cfg: DictConfig,
    inferer: Inferer | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-foreground-class Dice over whole validation volumes, plus ``val_hd95`` /
    ``val_surface_dice`` when ``training.metrics`` asks for them.

    ``inferer``: a 3D sliding window, or slice by slice for 2D models (``data/slices.py``);
    by default the one the config asks for.
    """
    model.eval()
    if inferer is None:
        inferer = build_inferer(cfg.training, slice_axis_of(cfg))
    metrics = SegMetrics(cfg.data.num_classes, cfg.training.get("metrics"))
    for batch in loader:
        image, label = on_device(batch["image"], device), on_device(batch["label"], device)
        with autocast(device, cfg.training.amp):
            logits = inferer(image, model)
        metrics(logits, label, voxel_spacing(batch["image"]))
    return metrics.aggregate()


def train(cfg: DictConfig, ctx: RunContext | None = None) -> TrainResult:
    """Train ``cfg`` to ``training.max_epochs`` (resuming from ``last.pt``); see the module doc.

    The MLflow run is ended in one place: FINISHED when the loop returns "done", FAILED when
    it diverged or raised, KILLED on an interrupt (a cancel). Under a runner ``end`` is a
    no-op: the runner owns the run.
    """
    tcfg = cfg.training
    # --- setup: everything from the config, the model before the data (a model that can't
    # be built fails before minutes of caching) ---------------------------------------------
    seed_everything(cfg.seed, tcfg.deterministic)
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    device = resolve_device(tcfg.device)
    avoid_onednn_bf16_backward(device, tcfg.amp)
    slice_axis = slice_axis_of(cfg)  # None: 3D; else 2D slices across this axis
    model = build_model(cfg.model).to(device)
    if tcfg.grad_checkpointing:
        apply_grad_checkpointing(model)
    data = build_data(cfg.data, tcfg, cfg.seed, cfg.get("augmentation"), slice_axis)
    loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.model.name)
    if ctx is not None:
        logger = RunLogger(ctx.tracking_uri, ctx.run_id, owns_run=False, spool_dir=ctx.spool_dir)
    else:
        logger = RunLogger.start(
            cfg.tracking.uri, cfg.tracking.experiment, run_name=standalone_run_name()
        )
    ckpt_dir = checkpoint_dir(cfg, ctx, logger.run_id)

    status = "FAILED"
    try:
        result = _train_loop(cfg, ctx, model, data, loss_fn, optimizer, device, logger, ckpt_dir)
        status = "FINISHED" if result.status == "done" else "FAILED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:  # --- cleanup ------------------------------------------------------------------
        logger.end(status)


def _train_loop(
    cfg: DictConfig,
    ctx: RunContext | None,
    model: nn.Module,
    data: DataBundle,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    device: torch.device,
    logger: RunLogger,
    ckpt_dir: Path,
) -> TrainResult:
    tcfg = cfg.training
    fresh = not (ckpt_dir / LAST).exists()
    if fresh and tcfg.get("find_lr"):
        # Before the schedule is built: OneCycle and friends read the lr as their peak.
        _find_lr(model, optimizer, loss_fn, data.train_loader, device, cfg, logger, ckpt_dir)
    steps_per_epoch = optimizer_steps_per_epoch(
        len(data.train_loader), tcfg.get("accumulate_steps", 1)
    )
    schedule = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch, tcfg.max_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
    trainee = Trainee(model, loss_fn, optimizer, schedule, scaler, device, tcfg)
    inferer = build_inferer(tcfg, slice_axis_of(cfg))

    # --- resume or start fresh -------------------------------------------------------------
    progress, resumed_from = Progress(), None
    if not fresh:
        progress = load_checkpoint(ckpt_dir / LAST, model, optimizer, schedule, scaler)
        resumed_from = progress.epoch
        log.info("resumed from %s at epoch %d", ckpt_dir / LAST, resumed_from)
    # A tag, not a param: an attempt resumed elsewhere may train on another device.
    logger.set_tag("device", describe_device(device))
    if resumed_from is None or logger.owns_run:
        # Params are write-once in MLflow: a resumed run (e.g. max_epochs raised) must not
        # log them again into the same run.
        logger.log_params(flatten_config(cfg))
        _log_split(logger, data)
        logger.log_config(cfg)
    else:
        logger.log_config(cfg, f"config_resumed_epoch{resumed_from}.yaml")

    def result(status: str, epochs: int, reason: str | None, metrics: dict[str, float]) -> Any:
        best = progress.best_metric if progress.best_epoch is not None else None
        return TrainResult(
            status=status,  # type: ignore[arg-type]
            epochs_completed=epochs,
            best_val_dice=best,
            best_epoch=progress.best_epoch,
            resumed_from_epoch=resumed_from,
            reason=reason,
            metrics=metrics,
        )

    # --- epochs ----------------------------------------------------------------------------
    metrics: dict[str, float] = {}
    stop_reason: str | None = None
    for epoch in range(progress.epoch + 1, tcfg.max_epochs + 1):
        start = time.perf_counter()
        data.set_epoch(epoch)  # shuffle + augmentation follow (seed, epoch, case) only
        try:
            train_loss, patches, lr = train_one_epoch(trainee, data.train_loader, epoch, progress)
        except Diverged as err:
            log.error("%s", err)
            logger.set_tag("divergence", str(err))
            return result("diverged", epoch - 1, str(err), metrics)
        train_seconds = time.perf_counter() - start
        if schedule.interval == "epoch":
            schedule.scheduler.step()
        metrics = {"train_loss": train_loss, "lr": lr, "samples_per_s": patches / train_seconds}

        progress.epoch = epoch
        if epoch % tcfg.val_interval == 0 or epoch == tcfg.max_epochs:
            dice, extra = validate(model, data.val_loader, device, cfg, inferer)
            metrics["val_dice"] = float(torch.nanmean(dice))
            for name, value in zip(data.info.class_names[1:], dice.tolist(), strict=True):
                metrics[f"val_dice_{name}"] = value
            metrics.update(extra)
            if schedule.interval == "val":
                schedule.scheduler.step(metrics["val_dice"])  # type: ignore[arg-type]
            stop_reason = early_stop_reason(
                tcfg.get("early_stopping"), progress, metrics, epoch, tcfg.val_interval
            )
            if metrics["val_dice"] > progress.best_metric:
                progress.best_metric, progress.best_epoch = metrics["val_dice"], epoch
                save_checkpoint(ckpt_dir / BEST, model, optimizer, schedule, progress, scaler)
        save_checkpoint(ckpt_dir / LAST, model, optimizer, schedule, progress, scaler)
        metrics["epoch_seconds"] = time.perf_counter() - start

        logger.log_metrics(metrics, step=epoch)
        log.info("epoch %d/%d %s", epoch, tcfg.max_epochs, _fmt(metrics))
        if ctx is not None and ctx.progress is not None:
            ctx.progress({"epoch": epoch, "max_epochs": tcfg.max_epochs, **metrics})
        if stop_reason:
            log.info("early stop: %s", stop_reason)
            logger.set_tag("early_stop", stop_reason)
            break

    if progress.best_epoch is not None:
        logger.log_metrics({"best_val_dice": progress.best_metric}, step=progress.epoch)
    return result("done", progress.epoch, stop_reason, metrics)


def _log_split(logger: RunLogger, data: DataBundle) -> None:
    """The cases each side of the split: counts and method as params, ids as split.json."""
    info = data.info
    logger.log_params(
        {
            "split.method": info.split,
            "split.n_train": str(len(info.train_cases)),
            "split.n_val": str(len(info.val_cases)),
            "split.channels": ",".join(info.channel_names),
        }
    )
    logger.client.log_dict(logger.run_id, split_record(info), "split.json")


def _find_lr(
    model: nn.Module,
    optimizer: Optimizer,
    loss_fn: nn.Module,
    loader: Any,
    device: torch.device,
    cfg: DictConfig,
    logger: RunLogger,
    ckpt_dir: Path,
) -> None:
    """LR range test; the chosen lr goes to the optimizer, a param, a metric and a plot."""
    plot = ckpt_dir / "lr_finder.png"
    lr = find_lr(model, optimizer, loss_fn, loader, device, cfg.training.lr_finder, plot)
    logger.client.log_artifact(logger.run_id, str(plot), "lr_finder")
    if lr is not None:
        logger.log_params({"lr_finder.lr": f"{lr:.6g}"})
        logger.log_metrics({"lr_finder_lr": lr}, step=0)
    else:
        logger.set_tag("lr_finder", f"no descent found; keeping lr {cfg.optimizer.lr}")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not math.isnan(v))
