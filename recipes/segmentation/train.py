"""The segmentation trainer: one function, readable top to bottom.

``train(cfg, ctx)`` seeds, builds data/model/loss/optimizer/schedule from the Hydra config,
resumes from ``last.pt`` when present, then runs epochs of patch-based training with
sliding-window validation (mean foreground Dice), checkpointing and MLflow logging. A NaN or
infinite loss stops the run at once with status "diverged".

Under a runner (``ctx`` given) it logs into the runner's MLflow run and leaves ending it to the
runner; standalone (``python -m recipes.segmentation``) it creates and ends its own run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.checkpoint import BEST, LAST, Progress, load_checkpoint, save_checkpoint
from recipes.components.data import build_data, seed_for_epoch
from recipes.components.losses import build_loss
from recipes.components.mlflow_logging import RunLogger, flatten_config
from recipes.components.models import apply_grad_checkpointing, build_model
from recipes.components.optim import Schedule, build_optimizer, build_scheduler
from recipes.contract import RunContext, TrainResult

log = logging.getLogger(__name__)


class Diverged(Exception):
    """The loss became NaN/inf; the message says where."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast (CPU or CUDA), or nothing for fp32."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"training.amp must be bf16 or fp32, got {amp!r}")


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


def _plain(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # MetaTensor tracks metadata through every op; the training math does not need it.
    return (x.as_tensor() if isinstance(x, MetaTensor) else x).to(device, non_blocking=True)


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


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    schedule: Schedule,
    device: torch.device,
    amp: str,
    epoch: int,
    progress: Progress,
) -> tuple[float, int, float]:
    """One pass over the training patches; returns (mean loss, patches seen, last lr)."""
    model.train()
    total_loss, patches, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    for step, batch in enumerate(loader, start=1):
        image, label = _plain(batch["image"], device), _plain(batch["label"], device)
        with autocast(device, amp):
            logits = model(image)
        loss = loss_fn(logits.float(), label)  # the loss itself in fp32 for stable reductions
        if not torch.isfinite(loss):
            # Before the optimizer step: last.pt keeps the last good weights.
            raise Diverged(f"loss became {loss.item()} at epoch {epoch} step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if schedule.interval == "step":
            schedule.scheduler.step()
        progress.global_step += 1
        total_loss += loss.item()
        patches += image.shape[0]
    return total_loss / max(1, len(loader)), patches, lr


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    cfg: DictConfig,
) -> torch.Tensor:
    """Per-foreground-class Dice over whole validation volumes (sliding window)."""
    model.eval()
    num_classes = cfg.data.num_classes
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    for batch in loader:
        image, label = _plain(batch["image"], device), _plain(batch["label"], device)
        with autocast(device, cfg.training.amp):
            logits = sliding_window_inference(
                image,
                roi_size=list(cfg.training.patch_size),
                sw_batch_size=cfg.training.sw_batch_size,
                predictor=model,
                overlap=cfg.training.sw_overlap,
            )
        pred = one_hot(logits.argmax(dim=1, keepdim=True), num_classes)
        metric(y_pred=pred, y=one_hot(label.long(), num_classes))
    return metric.aggregate().float().cpu()


def train(cfg: DictConfig, ctx: RunContext | None = None) -> TrainResult:
    """Train ``cfg`` to ``training.max_epochs`` (resuming from ``last.pt``); see the module doc."""
    tcfg = cfg.training
    seed_everything(cfg.seed, tcfg.deterministic)
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    device = resolve_device(tcfg.device)

    # --- build everything from the config --------------------------------------------------
    data = build_data(cfg.data, tcfg, cfg.seed)
    class_names = data.info.class_names
    model = build_model(cfg.model).to(device)
    if tcfg.grad_checkpointing:
        apply_grad_checkpointing(model)
    loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    schedule = build_scheduler(cfg.scheduler, optimizer, len(data.train_loader), tcfg.max_epochs)

    if ctx is not None:
        logger = RunLogger(ctx.tracking_uri, ctx.run_id, owns_run=False)
    else:
        logger = RunLogger.start(cfg.tracking.uri, cfg.tracking.experiment)
    ckpt_dir = checkpoint_dir(cfg, ctx, logger.run_id)

    try:
        # --- resume or start fresh ---------------------------------------------------------
        progress, resumed_from = Progress(), None
        if (ckpt_dir / LAST).exists():
            progress = load_checkpoint(ckpt_dir / LAST, model, optimizer, schedule)
            resumed_from = progress.epoch
            log.info("resumed from %s at epoch %d", ckpt_dir / LAST, resumed_from)
        if resumed_from is None or logger.owns_run:
            # Params are write-once in MLflow: a resumed run (e.g. max_epochs raised) must not
            # log them again into the same run.
            logger.log_params(flatten_config(cfg))
            logger.log_config(cfg)
        else:
            logger.log_config(cfg, f"config_resumed_epoch{resumed_from}.yaml")

        # --- epochs ------------------------------------------------------------------------
        metrics: dict[str, float] = {}
        for epoch in range(progress.epoch + 1, tcfg.max_epochs + 1):
            start = time.perf_counter()
            data.train_transform.set_random_state(seed=seed_for_epoch(cfg.seed, epoch))
            try:
                train_loss, patches, lr = train_one_epoch(
                    model,
                    data.train_loader,
                    loss_fn,
                    optimizer,
                    schedule,
                    device,
                    tcfg.amp,
                    epoch,
                    progress,
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
                dice = validate(model, data.val_loader, device, cfg)
                metrics["val_dice"] = float(torch.nanmean(dice))
                for name, value in zip(class_names[1:], dice.tolist(), strict=True):
                    metrics[f"val_dice_{name}"] = value
                if metrics["val_dice"] > progress.best_metric:
                    progress.best_metric, progress.best_epoch = metrics["val_dice"], epoch
                    save_checkpoint(ckpt_dir / BEST, model, optimizer, schedule, progress)
            save_checkpoint(ckpt_dir / LAST, model, optimizer, schedule, progress)
            metrics["epoch_seconds"] = time.perf_counter() - start

            logger.log_metrics(metrics, step=epoch)
            log.info("epoch %d/%d %s", epoch, tcfg.max_epochs, _fmt(metrics))
            if ctx is not None and ctx.progress is not None:
                ctx.progress({"epoch": epoch, "max_epochs": tcfg.max_epochs, **metrics})

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
        metrics=metrics,
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not math.isnan(v))
