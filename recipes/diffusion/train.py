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
Under a runner (``ctx`` given) it logs into the runner's MLflow run and leaves ending it to the
runner; standalone (``python -m recipes.diffusion``) it creates and ends its own run.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler, Scheduler
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.data.loaders import DataBundle, build_data, split_record
from recipes.components.data.slices import slice_axis_of
from recipes.components.diffusion.losses import DiffusionLoss, build_diffusion_loss
from recipes.components.diffusion.models import build_denoiser
from recipes.components.diffusion.noise import (
    build_schedulers,
    mask_to_x0,
    predicted_x0,
    step_seed,
    training_target,
)
from recipes.components.diffusion.validation import Validation, save_examples, validate
from recipes.components.training.checkpoint import (
    BEST,
    LAST,
    Progress,
    load_checkpoint,
    save_checkpoint,
)
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
from recipes.components.training.step import AMP_DTYPES, Diverged, autocast, on_device
from recipes.contract import RunContext, TrainResult

__all__ = ["Trainee", "train", "train_step"]

log = logging.getLogger(__name__)


@dataclass
class Trainee:
    """What one optimisation step touches: the denoiser and everything that updates it."""

    net: nn.Module
    mode: str  # how the denoiser takes the image: MONAI's "crossattn" (context) or "concat"
    noise: DDPMScheduler
    loss_fn: DiffusionLoss
    optimizer: Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    device: torch.device
    tcfg: DictConfig
    seed: int
    inferer: DiffusionInferer = field(init=False)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.inferer = DiffusionInferer(self.noise)
        self.generator = torch.Generator(device=self.device)


def train_step(t: Trainee, batch: dict[str, Any], step: int) -> dict[str, float]:
    """Optimizer step number ``step`` (1-based) on one batch of slices; returns the loss and
    its parts (mse, and dice / bce of the implied x_0)."""
    t.net.train()
    image, label = on_device(batch["image"], t.device), on_device(batch["label"], t.device)
    x0 = mask_to_x0(label)
    t.generator.manual_seed(step_seed(t.seed, step))
    noise = torch.randn(x0.shape, generator=t.generator, device=t.device)
    timesteps = torch.randint(
        0, t.noise.num_train_timesteps, (x0.shape[0],), generator=t.generator, device=t.device
    )
    t.loss_fn.set_step(step - 1)
    with autocast(t.device, t.tcfg.amp):
        output = t.inferer(x0, t.net, noise, timesteps, condition=image, mode=t.mode).float()
    # The loss in fp32; x_t again (cheap) for the x_0 estimate the auxiliary terms score.
    x0_hat = predicted_x0(t.noise, t.noise.add_noise(x0, noise, timesteps), output, timesteps)
    target = training_target(t.noise, x0, noise, timesteps)
    loss, parts = t.loss_fn(output, target, x0_hat, (x0 > 0).float())
    # One device-to-host copy for the loss and its parts (one sync per step on a GPU).
    numbers = torch.stack([loss.detach(), *parts.values()]).tolist()
    values = dict(zip(["loss", *parts], numbers, strict=True))
    if not math.isfinite(values["loss"]):
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

    The MLflow run is ended in one place: FINISHED when the loop returns "done", FAILED when
    it diverged or raised, KILLED on an interrupt (a cancel). Under a runner ``end`` is a
    no-op: the runner owns the run.
    """
    tcfg = cfg.training
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # N copies would log into one run
        raise ValueError("the diffusion recipe does not train DDP cells yet: gpus_per_cell 1")
    # --- setup: everything from the config, the model before the data -----------------------
    seed_everything(cfg.seed, tcfg.deterministic)
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    device = resolve_device(tcfg.device)
    avoid_onednn_bf16_backward(device, tcfg.amp)
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
    optimizer = build_optimizer(cfg.optimizer, net)
    if ctx is not None:
        logger = RunLogger(ctx.tracking_uri, ctx.run_id, owns_run=False, spool_dir=ctx.spool_dir)
    else:
        logger = RunLogger.start(
            cfg.tracking.uri, cfg.tracking.experiment, run_name=standalone_run_name()
        )
    ckpt_dir = checkpoint_dir(cfg, ctx, logger.run_id)
    schedule = build_scheduler(cfg.scheduler, optimizer, 1, int(tcfg.max_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
    trainee = Trainee(
        net, mode, schedulers[0], loss_fn, optimizer, schedule, scaler, device, tcfg, cfg.seed
    )

    status = "FAILED"
    try:
        result = _train_loop(cfg, ctx, trainee, schedulers, data, slice_axis, logger, ckpt_dir)
        status = {"done": "FINISHED", "interrupted": "KILLED"}.get(result.status, "FAILED")
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:  # --- cleanup ------------------------------------------------------------------
        logger.end(status)


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
        progress = load_checkpoint(ckpt_dir / LAST, t.net, t.optimizer, t.schedule, t.scaler)
        resumed_from = progress.global_step
        log.info("resumed from %s at step %d", ckpt_dir / LAST, resumed_from)
    # Tags, not params: an attempt resumed elsewhere may run on another device.
    logger.set_tag("device", describe_device(t.device))
    logger.set_tag("sampling_dtype", str(AMP_DTYPES.get(tcfg.amp, torch.float32)).split(".")[1])
    if resumed_from is None or logger.owns_run:
        logger.log_params(flatten_config(cfg))  # diffusion.sampler, .sampling_steps, ...
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
    window = _Window()
    if progress.in_epoch:  # stopped between two reports: the logged means stay exact
        window.load(progress.in_epoch)
    progress.in_epoch = None
    stop = ctx.stop if ctx is not None else None
    for step, batch in _batches(data, progress.global_step, max_steps):
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
                    t.net, t.mode, schedulers, data.val_loader, t.device, cfg, slice_axis
                )
            except Diverged as err:
                return diverged(err, metrics)
            metrics.update(_val_metrics(val, data, time.perf_counter() - start))
            if t.schedule.interval == "val":
                t.schedule.scheduler.step(metrics["val_dice"])  # type: ignore[arg-type]
            if metrics["val_dice"] > progress.best_metric:
                progress.best_metric, progress.best_epoch = metrics["val_dice"], step
                save_checkpoint(ckpt_dir / BEST, t.net, t.optimizer, t.schedule, progress, t.scaler)
            _log_examples(logger, val, step)
        # RunContext.stop (a time limit, a preemption): save this step, then stop.
        stopping = stop is not None and bool(stop) and step < max_steps
        progress.in_epoch = window.state()  # the steps since the last report
        if validating or stopping or step % int(tcfg.checkpoint_every) == 0:
            save_checkpoint(ckpt_dir / LAST, t.net, t.optimizer, t.schedule, progress, t.scaler)
        if stopping:
            log.warning("stopped at step %d: %s", step, stop.reason)  # type: ignore[union-attr]
            return result("interrupted", stop.reason, metrics)  # type: ignore[union-attr]
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


def _batches(data: DataBundle, done: int, max_steps: int) -> Iterator[tuple[int, Any]]:
    """(step, batch) from step ``done + 1`` on, through as many data epochs as it takes.

    A resumed run re-enters the data epoch it stopped in and drops the batches it had
    already trained on (loading them costs a little; skipping them keeps the order exact).
    """
    per_epoch = len(data.train_loader)
    epoch, skip = divmod(done, per_epoch)
    step = done
    while step < max_steps:
        epoch += 1
        data.set_epoch(epoch)
        for batch in itertools.islice(data.train_loader, skip, None):
            step += 1
            yield step, batch
            if step >= max_steps:
                return
        skip = 0


class _Window:
    """Means of the step losses between two logging points, and the slice throughput."""

    NAMES: ClassVar[dict[str, str]] = {
        "loss": "train_loss",
        "mse": "train_mse",
        "dice": "train_x0_dice_loss",
        "bce": "train_x0_bce",
    }

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.slices, self.start = 0, 0, time.perf_counter()

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "slices": self.slices}

    def load(self, state: dict[str, Any]) -> None:
        self.sums, self.steps, self.slices = dict(state["sums"]), state["steps"], state["slices"]

    def add(self, parts: dict[str, float], slices: int) -> None:
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps, self.slices = self.steps + 1, self.slices + slices

    def flush(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.start
        out = {self.NAMES[k]: v / max(1, self.steps) for k, v in self.sums.items()}
        out["samples_per_s"] = self.slices / seconds
        out["steps_per_s"] = self.steps / seconds
        self.reset()
        return out


def _val_metrics(val: Validation, data: DataBundle, seconds: float) -> dict[str, float]:
    out = {"val_dice": float(torch.nanmean(val.dice)), **val.metrics, "val_seconds": seconds}
    for name, value in zip(data.info.class_names[1:], val.dice.tolist(), strict=True):
        out[f"val_dice_{name}"] = value
    return out


def _log_examples(logger: RunLogger, val: Validation, step: int) -> None:
    """A PNG of a few validation slices (image, truth, ensemble mean) as an artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        png = save_examples(val.examples, Path(tmp) / f"val_step{step:07d}.png")
        try:
            logger.client.log_artifact(logger.run_id, str(png), "validation")
        except Exception:
            if logger.spool_dir is None:
                raise
            # The server is unreachable: a picture is not worth stopping the run for.
            log.warning("could not upload %s", png.name)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not math.isnan(v))
