"""The segmentation recipe, readable top to bottom: setup, the epoch loop, cleanup.

``train(cfg, ctx)`` seeds, builds data/model/loss/optimizer/schedule from the Hydra config,
resumes from ``last.pt`` when present, then runs epochs of patch-based training with
sliding-window validation over whole volumes (mean foreground Dice; slice by slice for the
2D variant, ``dims=2d``), checkpointing and MLflow logging. A NaN or infinite loss stops the
run at once with status "diverged". Optional, all from ``cfg.training``: an LR range test
first (``find_lr``), fp16 with a GradScaler, gradient clipping and accumulation, early
stopping (on val_dice, val_loss or any validation metric, with convergence and divergence
thresholds), HD95 / surface Dice.

``task=em_instance`` trains three heads (binary, boundary, distance) on targets derived
from instance labels and validates instances from a seeded watershed (adapted Rand error,
variation of information); a dataset mask restricts loss and metrics. ``mode=test``
evaluates ``test_checkpoint`` on the validation cases instead of training.

Gradient accumulation steps the optimizer every N batches (and at the end of the epoch), each
batch's loss divided by its group's length, so the update matches a batch N times larger
(``training/loop.py``); halving ``batch_size`` and doubling ``accumulate_steps`` keeps the
steps, the schedule and the epoch, and resumes a checkpoint of the other size. Clipping acts on
the unscaled gradients, i.e. in the units the threshold was chosen in.

Under a runner (``ctx`` given) it logs into the runner's MLflow run and leaves ending it to the
runner; standalone (``python -m recipes.segmentation``) it creates and ends its own run.

With torch.distributed's ``env://`` variables set (a DDP cell, ``torchrun``) it trains data
parallel: ``training.batch_size`` per process, rank 0 logs and checkpoints
(``training/distributed.py`` says how the work is split and why resume stays exact).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.data.loaders import DataBundle, build_data, split_record
from recipes.components.data.slices import build_inferer, slice_axis_of
from recipes.components.models.build import (
    apply_grad_checkpointing,
    build_model,
    load_plain_state_dict,
)
from recipes.components.models.sizes import effective_model_config
from recipes.components.testtime.original_grid import validate_on_original_grid
from recipes.components.training.budget import Budget
from recipes.components.training.checkpoint import (
    BEST,
    LAST,
    Progress,
    load_checkpoint,
    save_checkpoint,
)
from recipes.components.training.distributed import Dist
from recipes.components.training.early_stopping import EarlyStop, EarlyStopping
from recipes.components.training.frame import open_run, start_process
from recipes.components.training.loop import (
    EpochState,
    Interrupted,
    StepCheckpoints,
    Trainee,
    checkpoint_every_steps,
    rebatched,
    requested_stop_reason,
    train_one_epoch,
)
from recipes.components.training.losses import build_loss
from recipes.components.training.lr_finder import find_lr_and_log
from recipes.components.training.mlflow_logging import RunLogger, flatten_config, log_split
from recipes.components.training.optim import build_optimizer, build_scheduler
from recipes.components.training.selection import (
    Selection,
    best_metrics,
    best_val_dice,
    record_best,
)
from recipes.components.training.setup import describe_device
from recipes.components.training.step import (
    Diverged,
    LoaderClock,
    autocast,
    throughput,
)
from recipes.components.training.step_metrics import step_metrics_for
from recipes.components.training.validation import (
    check_task,
    evaluate,
    metric_rules,
    save_instances,
)
from recipes.contract import RunContext, TrainResult

__all__ = ["Diverged", "Trainee", "autocast", "train", "train_one_epoch", "validate"]

log = logging.getLogger(__name__)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    cfg: DictConfig,
    inferer: Inferer | None = None,
    loss_fn: nn.Module | None = None,
    dist: Dist | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-foreground-class Dice over whole validation volumes, plus ``val_hd95`` /
    ``val_surface_dice`` when ``training.metrics`` asks for them, the instance metrics of
    ``task=em_instance`` and, given ``loss_fn``, ``val_loss`` (``training/validation.py``).

    ``inferer``: a 3D sliding window, or slice by slice for 2D models (``data/slices.py``);
    by default the one the config asks for. ``dist`` (DDP): ``loader`` holds this rank's
    share of the volumes; the metrics are the whole set's, on every rank.
    """
    if inferer is None:
        inferer = build_inferer(cfg.training, slice_axis_of(cfg))
    return evaluate(model, loader, device, cfg, inferer, loss_fn, dist=dist)


def train(cfg: DictConfig, ctx: RunContext | None = None) -> TrainResult:
    """Train ``cfg`` to ``training.max_epochs`` (resuming from ``last.pt``); see the module doc.

    Setup here, the epoch loop in :func:`_train_loop`; the frame around them (seeding, the
    DDP group, the MLflow run and how it ends, cleanup) is ``training/frame.py``'s.
    """
    tcfg = cfg.training
    # --- setup: everything from the config, the model before the data (a model that can't
    # be built fails before minutes of caching) ---------------------------------------------
    dist = start_process(cfg)
    device = dist.device
    slice_axis = slice_axis_of(cfg)  # None: 3D; else 2D slices across this axis
    check_task(cfg)
    # The widths the network is built with (size preset, DynUNet's plan), as MLflow logs them.
    cfg.model = effective_model_config(cfg.model)
    model = build_model(cfg.model).to(device)
    if tcfg.grad_checkpointing:
        apply_grad_checkpointing(model)
    aug = cfg.get("augmentation")
    data = build_data(cfg.data, tcfg, cfg.seed, aug, slice_axis, cfg.get("task"))
    if dist.active and not data.shard(dist.rank, dist.world):
        log.info("fewer validation volumes than ranks: every rank validates them all")
    loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.model.name)

    # --- the loop; leaving the block is the cleanup ------------------------------------------
    with open_run(cfg, ctx, dist) as run:
        if cfg.get("mode", "train") == "test":
            return run.record(_test(cfg, model, data, loss_fn, device, run.logger))
        with dist.peers_guarded():
            result = _train_loop(
                cfg, ctx, model, data, loss_fn, optimizer, device, run.logger, run.ckpt_dir, dist
            )
        best, final_check = run.ckpt_dir / BEST, tcfg.get("validate_on_original_grid")
        if result.status == "done" and final_check and best.exists() and dist.main:
            # best.pt scored as test is (the input's grid, the same rule): original_grid.py
            final = validate_on_original_grid(cfg, best, data.info.val_cases, device)
            run.logger.log_metrics(final, step=result.best_epoch or result.epochs_completed)
            result.metrics.update(final)
        return run.record(result)


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
    dist: Dist,
) -> TrainResult:
    tcfg = cfg.training
    fresh = not (ckpt_dir / LAST).exists()
    if dist.active and tcfg.get("find_lr"):
        raise ValueError("training.find_lr is not supported in DDP cells yet: run it in one")
    if fresh and tcfg.get("find_lr"):
        # Before the schedule is built: OneCycle and friends read the lr as their peak.
        find_lr_and_log(model, optimizer, loss_fn, data.train_loader, device, cfg, logger, ckpt_dir)
    # Epochs, their steps (training.steps_per_epoch) and the end (max_epochs, max_steps).
    budget = Budget.of(tcfg, len(data.train_loader))
    schedule = build_scheduler(
        cfg.scheduler,
        optimizer,
        budget.steps_per_epoch,
        budget.epochs,
        budget.total_steps,
        tcfg.val_interval,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
    group = dist if dist.active else None  # DDP: the ranks agree at every step
    watch = step_metrics_for(optimizer, tcfg)  # grad_norm, clipping, lr/<group>
    trainee = Trainee(
        dist.wrap(model), loss_fn, optimizer, schedule, scaler, device, tcfg, group, watch
    )
    inferer = build_inferer(tcfg, slice_axis_of(cfg))
    # training.select: the metric that chooses best.pt (and early stopping's default monitor).
    selection = Selection.from_config(tcfg)
    early_stopping = EarlyStopping(tcfg.get("early_stopping"), tcfg.val_interval, selection)
    every = checkpoint_every_steps(tcfg)
    # The runner's "stop at the next step and save" (a time limit, a preemption).
    stop_request = ctx.stop if ctx is not None else None

    def save_last() -> None:
        if dist.main:  # one writer; the other ranks hold the same weights
            save_checkpoint(ckpt_dir / LAST, model, optimizer, schedule, progress, scaler)
            # After the save: a crash before it loses these steps, which the resume logs.
            watch.flush(logger)

    # --- resume or start fresh -------------------------------------------------------------
    progress, resumed_from = Progress(), None
    if not fresh:
        progress = load_checkpoint(ckpt_dir / LAST, model, optimizer, schedule, scaler)
        resumed_from = progress.epoch
        early_stopping.load(ckpt_dir, progress.epoch)
        log.info("resumed from %s at epoch %d", ckpt_dir / LAST, resumed_from)
    # A step checkpoint: the epoch after progress.epoch is partly trained.
    in_epoch, progress.in_epoch = progress.in_epoch, None
    at = f"epoch{resumed_from}" + (f"_batch{in_epoch['batches']}" if in_epoch else "")
    # A tag, not a param: an attempt resumed elsewhere may train on another device.
    logger.set_tag("device", describe_device(device))
    if resumed_from is None or logger.owns_run:
        # Params are write-once in MLflow: a resumed run (e.g. max_epochs raised) must not
        # log them again into the same run.
        logger.log_params({**flatten_config(cfg), "metric_rules": metric_rules(cfg)})
        logger.log_params({f"budget.{k}": str(v) for k, v in budget.describe().items()})
        log_split(logger, split_record(data.info))
        logger.log_config(cfg)
    else:
        logger.log_config(cfg, f"config_resumed_{at}.yaml")

    def result(status: str, epochs: int, reason: str | None, metrics: dict[str, float]) -> Any:
        found = progress.best_epoch is not None
        return TrainResult(
            status=status,  # type: ignore[arg-type]
            epochs_completed=epochs,
            best_val_dice=best_val_dice(progress, selection) if found else None,
            best_epoch=progress.best_epoch,
            resumed_from_epoch=resumed_from,
            reason=reason,
            metrics=metrics,
            best_metric=progress.best_metric if found else None,
            select_metric=selection.metric,
            select_mode=selection.mode,
        )

    # --- epochs ----------------------------------------------------------------------------
    metrics: dict[str, float] = {}
    # The last validation's early-stopping decision: None (go on), a stop or a divergence.
    early_stop: EarlyStop | None = None
    last = budget.epochs
    for epoch in range(progress.epoch + 1, last + 1):
        # Asked between epochs (e.g. during a validation): last.pt is this point.
        if dist.any(bool(stop_request)):
            return result("interrupted", epoch - 1, requested_stop_reason(stop_request), metrics)
        start = time.perf_counter()
        state = rebatched(EpochState.from_dict(in_epoch), tcfg.batch_size) if in_epoch else None
        in_epoch = None
        # Shuffle + augmentation follow (seed, epoch, case) only; a resumed epoch skips the
        # batches it trained on.
        data.set_epoch(epoch, state.batches if state else 0, budget.batches(epoch))
        try:
            clock = LoaderClock(data.train_loader, state.wait_s if state else 0.0)
            before = state.seconds if state else 0.0  # this epoch's training in earlier attempts
            hook = StepCheckpoints(save_last, progress, every, stop_request, clock, before, group)
            train_loss, patches, lr = train_one_epoch(trainee, clock, epoch, progress, state, hook)
        except Diverged as err:
            log.error("%s", err)
            logger.set_tag("divergence", str(err))
            if dist.main:  # the steps up to the divergence: where the norms grew
                watch.flush(logger)
            return result("diverged", epoch - 1, str(err), metrics)
        except Interrupted as interrupted:
            log.warning("%s; %s holds that step", interrupted, ckpt_dir / LAST)
            return result("interrupted", epoch - 1, interrupted.reason, metrics)
        train_seconds = time.perf_counter() - start + before
        if schedule.interval == "epoch":
            schedule.scheduler.step()
        train_loss, patches = dist.mean(train_loss), dist.total(patches)
        metrics = {"train_loss": train_loss, "lr": lr, **watch.epoch_metrics()}
        metrics.update(throughput(clock, train_seconds, patches, tcfg.patch_size, device))
        if rss := data.worker_rss_gb():  # the busiest loader worker's peak so far
            metrics["loader_worker_rss_gb"] = max(rss)

        progress.epoch = epoch
        if epoch % tcfg.val_interval == 0 or epoch == last:
            # DDP: each rank scores its share of the volumes, the metrics are gathered; rank
            # 0's numbers are then everyone's, so that all ranks take the same decisions.
            dice, extra = validate(model, data.val_loader, device, cfg, inferer, loss_fn, dist)
            metrics["val_dice"] = float(torch.nanmean(dice))
            for name, value in zip(data.info.class_names[1:], dice.tolist(), strict=True):
                metrics[f"val_dice_{name}"] = value
            metrics.update(extra)
            metrics = dist.share(metrics)
            if schedule.interval == "val":
                schedule.scheduler.step(_monitored(metrics, schedule.monitor, "scheduler"))
            early_stop = early_stopping.update(progress, metrics, epoch)
            # Every rank records the best (the same metrics); rank 0 writes best.pt.
            if record_best(progress, selection, metrics, epoch) and dist.main:
                save_checkpoint(ckpt_dir / BEST, model, optimizer, schedule, progress, scaler)
            if early_stopping.es and dist.main:  # before last.pt: a resume finds its history
                early_stopping.save(ckpt_dir)
        save_last()
        metrics["epoch_seconds"] = time.perf_counter() - start + before

        logger.log_metrics(metrics, step=epoch)
        log.info("epoch %d/%d %s", epoch, last, _fmt(metrics))
        if ctx is not None and ctx.progress is not None:
            ctx.progress({"epoch": epoch, "max_epochs": last, **metrics})
        if early_stop is not None and early_stop.diverged:
            log.error("diverged: %s", early_stop.reason)
            logger.set_tag("divergence", early_stop.reason)
            return result("diverged", epoch, early_stop.reason, metrics)
        # A search's pruner, after each validation (last.pt is saved: resume continues it).
        prune = ctx.should_prune if ctx is not None and "val_dice" in metrics else None
        # Rank 0's pruner decides for all ranks.
        if pruned := dist.share(prune(epoch, metrics) if prune is not None else None):
            return result("pruned", epoch, pruned, metrics)
        if early_stop is not None:
            log.info("early stop: %s", early_stop.reason)
            logger.set_tag("early_stop", early_stop.reason)
            break

    if progress.best_epoch is not None:
        logger.log_metrics(best_metrics(progress, selection), step=progress.epoch)
    # Why it stopped early; None when it ran to max_epochs (a decision to stop always breaks).
    return result("done", progress.epoch, early_stop.reason if early_stop else None, metrics)


def _monitored(metrics: dict[str, float], key: str, who: str) -> float:
    if key not in metrics:
        raise KeyError(
            f"{who}.monitor={key!r} is not a validation metric of this run; it has "
            f"{sorted(k for k in metrics if k.startswith('val_'))}"
        )
    return metrics[key]


def _test(
    cfg: DictConfig,
    model: nn.Module,
    data: DataBundle,
    loss_fn: nn.Module,
    device: torch.device,
    logger: RunLogger,
) -> TrainResult:
    """``mode=test``: the weights of ``test_checkpoint`` on the validation cases, logged as
    ``test_*`` metrics; ``test_output_dir``: em_instance predictions saved as HDF5."""
    path = cfg.get("test_checkpoint")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"mode=test needs test_checkpoint: a checkpoint file, got {path}")
    load_plain_state_dict(model, torch.load(path, map_location="cpu", weights_only=True)["model"])
    logger.log_params({**flatten_config(cfg), "metric_rules": metric_rules(cfg)})
    logger.set_tag("test_checkpoint", str(path))
    out = cfg.get("test_output_dir")
    on_case = save_instances(Path(out)) if out else None
    inferer = build_inferer(cfg.training, slice_axis_of(cfg))
    dice, extra = evaluate(model, data.val_loader, device, cfg, inferer, loss_fn, on_case)
    metrics = {"test_dice": float(torch.nanmean(dice))}
    metrics.update({f"test_{k.removeprefix('val_')}": v for k, v in extra.items()})
    logger.log_metrics(metrics, step=0)
    log.info("test %s: %s", path, _fmt(metrics))
    return TrainResult("done", 0, best_val_dice=metrics["test_dice"], metrics=metrics)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not math.isnan(v))
