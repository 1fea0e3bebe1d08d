"""The diffusion recipe, readable top to bottom: setup, the step loop, cleanup.

``train(cfg, ctx)`` learns to denoise lesion masks given the image (CBF + TMAX slices, say):
each step takes a batch of 2D slices, maps the mask to x_0 in {-1, 1}, noises it at random
timesteps (MONAI's ``DDPMScheduler``) and regresses the noise with MONAI's
``DiffusionInferer`` driving the denoiser (MedSegDiff or MONAI's ``DiffusionModelUNet``).
Every ``training.val_every`` steps it samples every slice of each validation volume with
DDIM under the training's autocast, takes the ensemble mean and scores the restacked volumes
(``components/diffusion/validation.py``), so ``val_dice`` compares with the segmentation
recipe's 2D cells. Counted in optimizer steps (``training.max_steps``): the run's "epoch",
for the runner's progress and the MLflow step axis, is the step.

Resume is exact: the data order and augmentation are a function of (seed, data epoch,
item) and the step's noise and timesteps of (seed, step), so a run resumed from ``last.pt``
trains on what an uninterrupted one would; the batches of a half-done data epoch are drawn
and dropped up to where the run stopped. Validation draws from its own generator and never
touches the RNG that training resumes from.

A NaN or infinite loss, or NaN/inf validation samples, ends the run "diverged", never "done".

With torch.distributed's ``env://`` variables set (a DDP cell, ``executor.gpus_per_cell: N``,
or ``torchrun``) it trains data parallel as the segmentation recipe does
(``components/training/distributed.py``): ``training.batch_size`` volumes per process, rank
r takes every N-th item of the step's global batch and the rows of the step's noise and
timesteps that a single process with the global batch would give those items, so the two
train alike; each rank samples its share of the validation volumes (each volume's noise
from ``diffusion.val_seed`` and the case, wherever it is sampled); rank 0 logs and writes
checkpoints; a non-finite loss or sample and a stop request are agreed on by all ranks.
Under a runner (``ctx`` given) it logs into the runner's MLflow run and leaves ending it to the
runner; standalone (``python -m recipes.diffusion``) it creates and ends its own run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler, Scheduler
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.data.loaders import DataBundle, build_data, split_record
from recipes.components.data.slices import slice_axis_of
from recipes.components.diffusion.losses import DiffusionLoss, build_diffusion_loss
from recipes.components.diffusion.models import build_denoiser, split_output
from recipes.components.diffusion.noise import (
    build_schedulers,
    mask_to_x0,
    predicted_x0,
    rank_rows,
    step_seed,
    training_target,
)
from recipes.components.diffusion.reporting import StepWindow, log_examples
from recipes.components.diffusion.validation import Validation, validate
from recipes.components.training.case_metrics import METRIC_RULES
from recipes.components.training.checkpoint import (
    BEST,
    LAST,
    Progress,
    load_checkpoint,
    save_checkpoint,
)
from recipes.components.training.distributed import Dist
from recipes.components.training.frame import open_run, start_process
from recipes.components.training.loop import requested_stop_reason
from recipes.components.training.mlflow_logging import RunLogger, flatten_config, log_split
from recipes.components.training.optim import Schedule, build_optimizer, build_scheduler
from recipes.components.training.setup import describe_device
from recipes.components.training.step import (
    AMP_DTYPES,
    Diverged,
    LoaderClock,
    autocast,
    on_device,
)
from recipes.contract import RunContext, TrainResult

__all__ = ["Trainee", "train", "train_step"]

log = logging.getLogger(__name__)


@dataclass
class Trainee:
    """What one optimisation step touches: the denoiser and everything that updates it."""

    net: nn.Module  # trained: DistributedDataParallel around ``module`` in a DDP cell
    mode: str  # how the denoiser takes the image: MONAI's "crossattn" (context) or "concat"
    noise: DDPMScheduler
    loss_fn: DiffusionLoss
    optimizer: Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    device: torch.device
    tcfg: DictConfig
    seed: int
    dist: Dist = field(default_factory=Dist)
    inferer: DiffusionInferer = field(init=False)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.inferer = DiffusionInferer(self.noise)
        self.generator = torch.Generator(device=self.device)

    @property
    def module(self) -> nn.Module:
        """The bare denoiser: checkpoints and validation (no ``module.`` prefix)."""
        net = self.net
        return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def train_step(t: Trainee, batch: dict[str, Any], step: int) -> dict[str, float]:
    """Optimizer step number ``step`` (1-based) on one batch of slices; returns the loss and
    its parts (mse, and dice / bce of the implied x_0)."""
    t.net.train()
    image, label = on_device(batch["image"], t.device), on_device(batch["label"], t.device)
    x0 = mask_to_x0(label)
    t.generator.manual_seed(step_seed(t.seed, step))
    # The step's noise for the global batch; this rank's rows (``_rows``).
    per_item = 1 if t.tcfg.get("batch_slices") else int(t.tcfg.get("samples_per_volume", 1))
    rows = rank_rows(x0.shape[0], per_item, t.dist)
    n = x0.shape[0] * t.dist.world
    noise = torch.randn((n, *x0.shape[1:]), generator=t.generator, device=t.device)[rows]
    timesteps = torch.randint(
        0, t.noise.num_train_timesteps, (n,), generator=t.generator, device=t.device
    )[rows]
    t.loss_fn.set_step(step - 1)
    with autocast(t.device, t.tcfg.amp):
        output, cal = split_output(
            t.inferer(x0, t.net, noise, timesteps, condition=image, mode=t.mode)
        )
    output = output.float()
    # The loss in fp32; x_t again (cheap) for the x_0 estimate the auxiliary terms score.
    x0_hat = predicted_x0(t.noise, t.noise.add_noise(x0, noise, timesteps), output, timesteps)
    target = training_target(t.noise, x0, noise, timesteps)
    loss, parts = t.loss_fn(output, target, x0_hat, (x0 > 0).float(), cal)
    # One device-to-host copy for the loss and its parts (one sync per step on a GPU).
    numbers = torch.stack([loss.detach(), *parts.values()]).tolist()
    values = dict(zip(["loss", *parts], numbers, strict=True))
    bad = not math.isfinite(values["loss"])
    if t.dist.any(bad) and not bad:  # every rank stops at the same step
        raise Diverged(f"a non-finite loss on another rank at step {step}")
    if bad:
        # Before the optimizer step: last.pt keeps the last good weights.
        raise Diverged(f"loss became {values['loss']} at step {step}")
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if t.tcfg.grad_clip_norm:
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.net.parameters(), float(t.tcfg.grad_clip_norm))
    t.scaler.step(t.optimizer)
    t.scaler.update()
    if t.schedule.interval != "val":
        t.schedule.scheduler.step()
    return values


def train(cfg: DictConfig, ctx: RunContext | None = None) -> TrainResult:
    """Train ``cfg`` to ``training.max_steps`` (resuming from ``last.pt``); see the module doc.

    Setup here, the step loop in :func:`_train_loop`; the frame around them (seeding, the
    DDP group, the MLflow run and how it ends, cleanup) is ``training/frame.py``'s.
    """
    tcfg = cfg.training
    # --- setup: everything from the config, the model before the data -----------------------
    dist = start_process(cfg)
    device = dist.device
    if (cfg.get("dims") or {}).get("spatial_dims") != 2:
        raise ValueError("the diffusion recipe trains on 2D slices: use dims=2d")
    slice_axis = slice_axis_of(cfg)
    assert slice_axis is not None
    if cfg.data.num_classes != 2:
        raise ValueError(
            f"diffusion segments one foreground class: data.num_classes must be 2, "
            f"not {cfg.data.num_classes}"
        )
    net, mode = build_denoiser(cfg.model)
    net.to(device)
    schedulers = build_schedulers(cfg.diffusion)
    loss_fn = build_diffusion_loss(cfg.loss)
    data = build_data(cfg.data, tcfg, cfg.seed, cfg.get("augmentation"), slice_axis)
    if dist.active and not data.shard(dist.rank, dist.world):
        log.info("fewer validation volumes than ranks: every rank validates them all")
    optimizer = build_optimizer(cfg.optimizer, net)
    schedule = build_scheduler(cfg.scheduler, optimizer, 1, int(tcfg.max_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
    trainee = Trainee(
        dist.wrap(net),
        mode,
        schedulers[0],
        loss_fn,
        optimizer,
        schedule,
        scaler,
        device,
        tcfg,
        cfg.seed,
        dist,
    )

    # --- the loop; leaving the block is the cleanup ------------------------------------------
    with open_run(cfg, ctx, dist) as run, dist.peers_guarded():
        return run.record(
            _train_loop(cfg, ctx, trainee, schedulers, data, slice_axis, run.logger, run.ckpt_dir)
        )


def _train_loop(
    cfg: DictConfig,
    ctx: RunContext | None,
    t: Trainee,
    schedulers: tuple[DDPMScheduler, Scheduler],
    data: DataBundle,
    slice_axis: int,
    logger: RunLogger,
    ckpt_dir: Path,
) -> TrainResult:
    tcfg = cfg.training
    max_steps = int(tcfg.max_steps)

    # --- resume or start fresh -------------------------------------------------------------
    progress, resumed_from = Progress(), None
    if (ckpt_dir / LAST).exists():
        progress = load_checkpoint(ckpt_dir / LAST, t.module, t.optimizer, t.schedule, t.scaler)
        resumed_from = progress.global_step
        log.info("resumed from %s at step %d", ckpt_dir / LAST, resumed_from)
    # Tags, not params: an attempt resumed elsewhere may run on another device.
    logger.set_tag("device", describe_device(t.device))
    logger.set_tag("sampling_dtype", str(AMP_DTYPES.get(tcfg.amp, torch.float32)).split(".")[1])
    if resumed_from is None or logger.owns_run:
        # diffusion.sampler, .sampling_steps, ...; how val_dice is defined (case_metrics.py)
        logger.log_params({**flatten_config(cfg), "metric_rules": METRIC_RULES})
        log_split(logger, split_record(data.info))
        logger.log_config(cfg)
    else:
        logger.log_config(cfg, f"config_resumed_step{resumed_from}.yaml")

    def result(status: str, reason: str | None, metrics: dict[str, float]) -> TrainResult:
        best = progress.best_metric if progress.best_epoch is not None else None
        return TrainResult(
            status=status,  # type: ignore[arg-type]
            epochs_completed=progress.global_step,
            best_val_dice=best,
            best_epoch=progress.best_epoch,
            resumed_from_epoch=resumed_from,
            reason=reason,
            metrics=metrics,
        )

    def diverged(err: Diverged, metrics: dict[str, float]) -> TrainResult:
        log.error("%s", err)
        logger.set_tag("divergence", str(err))
        return result("diverged", str(err), metrics)

    # --- steps -------------------------------------------------------------------------------
    metrics: dict[str, float] = {}
    dist = t.dist
    window = StepWindow(dist, tcfg.patch_size, t.device)
    if progress.in_epoch:  # stopped between two reports: the logged means stay exact
        window.load(progress.in_epoch)
    progress.in_epoch = None
    stop_request = ctx.stop if ctx is not None else None
    for step, batch in _batches(data, progress.global_step, max_steps, window):
        try:
            window.add(train_step(t, batch, step), batch["image"].shape[0])
        except Diverged as err:
            return diverged(err, metrics)
        progress.epoch = progress.global_step = step
        validating = step % int(tcfg.val_every) == 0 or step == max_steps
        reporting = validating or step % int(tcfg.log_every) == 0
        if reporting:
            metrics = {**window.flush(), "lr": t.optimizer.param_groups[0]["lr"]}
        if validating:
            start = time.perf_counter()
            try:
                val = validate(
                    t.module,
                    t.mode,
                    schedulers,
                    data.val_loader,
                    t.device,
                    cfg,
                    slice_axis,
                    dist=dist,
                )
            except Diverged as err:
                return diverged(err, metrics)
            # Gathered already; rank 0's are everyone's, so all take the same decisions.
            metrics.update(dist.share(_val_metrics(val, data, time.perf_counter() - start)))
            if t.schedule.interval == "val":
                t.schedule.scheduler.step(metrics["val_dice"])  # type: ignore[arg-type]
            if metrics["val_dice"] > progress.best_metric:
                progress.best_metric, progress.best_epoch = metrics["val_dice"], step
                if dist.main:
                    save_checkpoint(
                        ckpt_dir / BEST, t.module, t.optimizer, t.schedule, progress, t.scaler
                    )
            if logger.enabled:
                log_examples(logger, val, step)
        # RunContext.stop (a time limit, a preemption): save this step, then stop; in a DDP
        # cell all ranks at the same step (the signal reaches them at different times).
        stopping = dist.any(stop_request is not None and bool(stop_request)) and step < max_steps
        saving = validating or stopping or step % int(tcfg.checkpoint_every) == 0
        # The steps since the last report (means over the ranks: every rank resumes from it).
        progress.in_epoch = window.state() if saving else None
        if saving and dist.main:
            save_checkpoint(ckpt_dir / LAST, t.module, t.optimizer, t.schedule, progress, t.scaler)
        if stopping:
            reason = requested_stop_reason(stop_request)
            log.warning("stopped at step %d: %s", step, reason)
            return result("interrupted", reason, metrics)
        if reporting:
            logger.log_metrics(metrics, step=step)
            log.info("step %d/%d %s", step, max_steps, _fmt(metrics))
            if ctx is not None and ctx.progress is not None:
                # The runner's progress display reads "epoch"/"max_epochs": here, steps.
                ctx.progress(
                    {"epoch": step, "max_epochs": max_steps, "step": step, "max_steps": max_steps}
                    | {k: v for k, v in metrics.items() if k in ("train_loss", "val_dice")}
                )

    if progress.best_epoch is not None:
        logger.log_metrics({"best_val_dice": progress.best_metric}, step=progress.global_step)
    return result("done", None, metrics)


def _batches(
    data: DataBundle, done: int, max_steps: int, window: StepWindow
) -> Iterator[tuple[int, Any]]:
    """(step, batch) from step ``done + 1`` on, through as many data epochs as it takes;
    the time each batch was waited for goes to ``window`` (``data_wait_fraction``).

    A resumed run re-enters the data epoch it stopped in after the batches it had already
    trained on (the sampler skips them unloaded; the order stays exact).
    """
    per_epoch = len(data.train_loader)
    epoch, skip = divmod(done, per_epoch)
    step = done
    while step < max_steps:
        epoch += 1
        data.set_epoch(epoch, skip)
        clock = LoaderClock(data.train_loader)
        for batch in clock:
            window.wait_s, clock.wait_s = window.wait_s + clock.wait_s, 0.0
            step += 1
            yield step, batch
            if step >= max_steps:
                return
        skip = 0


def _val_metrics(val: Validation, data: DataBundle, seconds: float) -> dict[str, float]:
    out = {"val_dice": float(torch.nanmean(val.dice)), **val.metrics, "val_seconds": seconds}
    for name, value in zip(data.info.class_names[1:], val.dice.tolist(), strict=True):
        out[f"val_dice_{name}"] = value
    return out


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not math.isnan(v))
