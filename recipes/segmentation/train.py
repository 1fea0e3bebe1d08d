"""The segmentation trainer: one function, readable top to bottom.

``train(cfg, ctx)`` seeds, builds data/model/loss/optimizer/schedule from the Hydra config,
resumes from ``last.pt`` when present, then runs epochs of patch-based training with
sliding-window validation over whole volumes (mean foreground Dice; slice by slice for the
2D variant, ``dims=2d``), checkpointing and MLflow logging. A NaN or infinite loss stops the
run at once with status "diverged". Optional, all from
``cfg.training``: an LR range test first (``find_lr``), fp16 with a GradScaler, gradient
clipping and accumulation, early stopping, HD95 / surface Dice (see ``steps.py``).

Under a runner (``ctx`` given) it logs into the runner's MLflow run and leaves ending it to the
runner; standalone (``python -m recipes.segmentation``) it creates and ends its own run.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from monai.utils import set_determinism
from omegaconf import DictConfig

from recipes.components.checkpoint import BEST, LAST, Progress, load_checkpoint, save_checkpoint
from recipes.components.data import DataBundle, build_data, split_record
from recipes.components.losses import build_loss
from recipes.components.lr_finder import find_lr
from recipes.components.mlflow_logging import RunLogger, flatten_config
from recipes.components.models import apply_grad_checkpointing, build_model
from recipes.components.optim import build_optimizer, build_scheduler
from recipes.components.slices import build_inferer, slice_axis_of
from recipes.contract import RunContext, TrainResult
from recipes.segmentation.steps import (
    Diverged,
    autocast,
    optimizer_steps_per_epoch,
    train_one_epoch,
    validate,
)

__all__ = ["Diverged", "autocast", "train", "train_one_epoch", "validate"]

log = logging.getLogger(__name__)


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 NVIDIA H100 80GB HBM3``: what the run trained on."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # MONAI's helper seeds and pins cuDNN; deterministic kernels only warn where torch
        # has none (e.g. trilinear upsampling backward on CUDA, used by SegResNet) rather
        # than failing the run. cuBLAS needs its workspace fixed before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        set_determinism(seed=seed)
        torch.use_deterministic_algorithms(True, warn_only=True)


def standalone_run_name() -> str | None:
    """Under Hydra (also multirun), name the run by its overrides: ``model=unet,seed=1``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().job.override_dirname or None


def checkpoint_dir(cfg: DictConfig, ctx: RunContext | None, run_id: str) -> Path:
    """ctx's directory, else training.checkpoint_dir, else Hydra's output dir, else per run."""
    if ctx is not None:
        return Path(ctx.checkpoint_dir)
    if cfg.training.get("checkpoint_dir"):
        return Path(cfg.training.checkpoint_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / "checkpoints"
    return Path("checkpoints") / run_id


def train(cfg: DictConfig, ctx: RunContext | None = None) -> TrainResult:
    """Train ``cfg`` to ``training.max_epochs`` (resuming from ``last.pt``); see the module doc."""
    tcfg = cfg.training
    seed_everything(cfg.seed, tcfg.deterministic)
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    device = resolve_device(tcfg.device)

    # --- build everything from the config --------------------------------------------------
    slice_axis = slice_axis_of(cfg)  # None: 3D; else 2D slices across this axis
    # The model before the data: a model that can't be built fails before minutes of caching.
    model = build_model(cfg.model).to(device)
    if tcfg.grad_checkpointing:
        apply_grad_checkpointing(model)
    data = build_data(cfg.data, tcfg, cfg.seed, cfg.get("augmentation"), slice_axis)
    inferer = build_inferer(tcfg, slice_axis)
    class_names = data.info.class_names
    loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.model.name)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
    steps_per_epoch = optimizer_steps_per_epoch(
        len(data.train_loader), tcfg.get("accumulate_steps", 1)
    )

    if ctx is not None:
        logger = RunLogger(ctx.tracking_uri, ctx.run_id, owns_run=False, spool_dir=ctx.spool_dir)
    else:
        logger = RunLogger.start(
            cfg.tracking.uri, cfg.tracking.experiment, run_name=standalone_run_name()
        )
    ckpt_dir = checkpoint_dir(cfg, ctx, logger.run_id)

    try:
        fresh = not (ckpt_dir / LAST).exists()
        if fresh and tcfg.get("find_lr"):
            # Before the schedule is built: OneCycle and friends read the lr as their peak.
            _find_lr(model, optimizer, loss_fn, data.train_loader, device, cfg, logger, ckpt_dir)
        schedule = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch, tcfg.max_epochs)

        # --- resume or start fresh ---------------------------------------------------------
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

        # --- epochs ------------------------------------------------------------------------
        metrics: dict[str, float] = {}
        stop_reason: str | None = None
        for epoch in range(progress.epoch + 1, tcfg.max_epochs + 1):
            start = time.perf_counter()
            data.set_epoch(epoch)  # shuffle + augmentation follow (seed, epoch, case) only
            try:
                train_loss, patches, lr = train_one_epoch(
                    model,
                    data.train_loader,
                    loss_fn,
                    optimizer,
                    schedule,
                    device,
                    tcfg,
                    epoch,
                    progress,
                    scaler,
                )
            except Diverged as err:
                log.error("%s", err)
                logger.set_tag("divergence", str(err))
                logger.end("FAILED")
                return TrainResult(
                    status="diverged",
                    epochs_completed=epoch - 1,
                    best_val_dice=progress.best_metric if progress.best_epoch is not None else None,
                    best_epoch=progress.best_epoch,
                    resumed_from_epoch=resumed_from,
                    reason=str(err),
                    metrics=metrics,
                )
            train_seconds = time.perf_counter() - start
            if schedule.interval == "epoch":
                schedule.scheduler.step()
            metrics = {"train_loss": train_loss, "lr": lr, "samples_per_s": patches / train_seconds}

            progress.epoch = epoch
            if epoch % tcfg.val_interval == 0 or epoch == tcfg.max_epochs:
                dice, extra = validate(model, data.val_loader, device, cfg, inferer)
                metrics["val_dice"] = float(torch.nanmean(dice))
                for name, value in zip(class_names[1:], dice.tolist(), strict=True):
                    metrics[f"val_dice_{name}"] = value
                metrics.update(extra)
                if schedule.interval == "val":
                    schedule.scheduler.step(metrics["val_dice"])  # type: ignore[arg-type]
                stop_reason = _early_stop(
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

        best = progress.best_metric if progress.best_epoch is not None else None
        if best is not None:
            logger.log_metrics({"best_val_dice": best}, step=progress.epoch)
    except KeyboardInterrupt:
        logger.end("KILLED")
        raise
    except BaseException:
        logger.end("FAILED")
        raise
    logger.end("FINISHED")
    return TrainResult(
        status="done",
        epochs_completed=progress.epoch,
        best_val_dice=best,
        best_epoch=progress.best_epoch,
        resumed_from_epoch=resumed_from,
        reason=stop_reason,
        metrics=metrics,
    )


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
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
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


def _early_stop(
    es: DictConfig | None,
    progress: Progress,
    metrics: dict[str, float],
    epoch: int,
    val_interval: int,
) -> str | None:
    """Why to stop after this validation, or None. Call before ``progress`` records a best.

    "Good enough": the target Dice is reached. Patience: counted in validations since the
    last gain of more than ``min_delta`` over the best so far (the first validation counts
    as a gain).
    """
    if not es:
        return None
    dice = metrics["val_dice"]
    if progress.improved_epoch is None or dice > progress.best_metric + float(es.min_delta):
        progress.improved_epoch = epoch
    if es.get("good_enough") is not None and dice >= float(es.good_enough):
        return f"val_dice {dice:.4g} >= good_enough {es.good_enough}"
    patience = es.get("patience")
    if patience is not None and epoch - progress.improved_epoch >= int(patience) * val_interval:
        return f"no val_dice gain > {es.min_delta} in {patience} validations"
    return None


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not math.isnan(v))
