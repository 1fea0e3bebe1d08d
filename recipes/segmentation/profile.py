"""``profile(cfg, steps)``: train a cell's first steps and say what a whole run would cost.

The cell is built exactly as ``train`` builds it (model, data, loss, optimizer, schedule)
and trains ``steps`` optimizer steps through the same epoch function, loader and clock,
without MLflow, checkpoints or validation. It returns, JSON-ready:

- ``step_s``, ``data_wait_fraction``, ``patches_per_step``, ``voxels_per_s`` over the steps
  after the first (which starts the workers and plans the kernels);
- ``gpu_peak_mem_gb`` / ``gpu_peak_reserved_gb`` (CUDA) or ``peak_rss_gb`` (CPU), and
  ``loader_worker_rss_gb``: each loader worker's peak resident memory;
- the run's length as ``train`` would run it (``steps_per_epoch``, ``total_steps``,
  ``epochs``: ``training.patch_stride``, ``steps_per_epoch``, ``max_steps``, ``max_epochs``)
  and from it ``epoch_s`` and ``run_s`` (training steps only: validation is not counted);
- ``status``: ``ok``, or ``oom`` with the phase (model, data, step), the steps reached, the
  peak so far and the allocation that failed; or ``diverged``. Never raises for those.

``report`` (optional) gets the figures after every step, so a profile killed from outside
(the kernel's OOM killer) still leaves how far it got. Chunked-volume warnings (a chunking
that reads the whole volume per patch) are returned under ``warnings``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from recipes.components.data.loaders import build_data
from recipes.components.data.slices import slice_axis_of
from recipes.components.models.build import apply_grad_checkpointing, build_model
from recipes.components.models.sizes import effective_model_config
from recipes.components.training.budget import Budget
from recipes.components.training.checkpoint import Progress
from recipes.components.training.frame import start_process
from recipes.components.training.loop import Trainee, train_one_epoch
from recipes.components.training.losses import build_loss
from recipes.components.training.optim import build_optimizer, build_scheduler
from recipes.components.training.profiling import (
    StepClock,
    is_out_of_memory,
    peak_memory_gb,
    tried_to_allocate_gb,
)
from recipes.components.training.setup import describe_device
from recipes.components.training.step import Diverged, LoaderClock


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def shape_of(cfg: DictConfig) -> dict[str, Any]:
    """What a step's cost depends on, as the cell's config says it."""
    tcfg = cfg.training
    return {
        "model": str(cfg.model.name),
        "patch": [int(p) for p in tcfg.patch_size],
        "batch": int(tcfg.batch_size),
        "workers": int(tcfg.num_workers),
        "amp": str(tcfg.amp),
        "grad_checkpointing": bool(tcfg.grad_checkpointing),
    }


def profile(
    cfg: DictConfig, steps: int, report: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """See the module doc."""
    tcfg = cfg.training
    out: dict[str, Any] = {"steps_asked": int(steps), "shape": shape_of(cfg)}
    caught = _Warnings()
    logging.getLogger("recipes").addHandler(caught)
    dist = start_process(cfg)
    device = dist.device
    out["device"] = describe_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    phase, clock, data = "model", None, None
    try:
        cfg.model = effective_model_config(cfg.model)
        model = build_model(cfg.model).to(device)
        if tcfg.grad_checkpointing:
            apply_grad_checkpointing(model)
        phase = "data"
        data = build_data(
            cfg.data, tcfg, cfg.seed, cfg.get("augmentation"), slice_axis_of(cfg), cfg.get("task")
        )
        budget = Budget.of(tcfg, len(data.train_loader))
        out.update(budget.describe())
        loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
        optimizer = build_optimizer(cfg.optimizer, model, cfg.model.name)
        schedule = build_scheduler(
            cfg.scheduler, optimizer, budget.steps_per_epoch, budget.epochs, budget.total_steps
        )
        scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
        trainee = Trainee(model, loss_fn, optimizer, schedule, scaler, device, tcfg)
        phase = "step"
        loader = LoaderClock(data.train_loader)
        clock = StepClock(device, lambda: loader.wait_s, report)
        _run_steps(trainee, data, budget, min(int(steps), budget.total_steps), clock, loader)
    except Diverged as err:
        out.update(status="diverged", message=str(err))
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        out.update(
            status="oom",
            phase=phase,
            message=str(err).strip().splitlines()[0][:400],
            tried_to_allocate_gb=tried_to_allocate_gb(err),
        )
    else:
        out["status"] = "ok"
    finally:
        logging.getLogger("recipes").removeHandler(caught)
    out.update(clock.figures() if clock is not None else peak_memory_gb(device))
    out["warnings"] = caught.messages
    if data is not None:
        out["loader_worker_rss_gb"] = data.worker_rss_gb()
    if "step_s" in out and out["status"] == "ok":
        voxels = math.prod(int(p) for p in tcfg.patch_size)
        out["voxels_per_s"] = out["patches_per_step"] * voxels / out["step_s"]
        out["epoch_s"] = out["steps_per_epoch"] * out["step_s"]
        out["run_s"] = out["total_steps"] * out["step_s"]
    return out


def _run_steps(
    trainee: Trainee, data: Any, budget: Budget, steps: int, clock: StepClock, loader: Any
) -> None:
    """``steps`` optimizer steps from the run's start, through as many epochs as it takes,
    each capped as ``train`` caps it; ``clock`` sees every step."""
    progress, done, patches, epoch = Progress(), 0, 0, 0
    while done < steps:
        epoch += 1
        want = min(steps - done, budget.steps_per_epoch)
        batches = min(want * budget.accumulate, budget.epoch_batches)
        data.set_epoch(epoch, 0, None if batches >= budget.full_batches else batches)
        seen = patches

        def after_step(state: Any, seen: int = seen) -> None:
            clock(seen + state.patches)

        _, epoch_patches, _ = train_one_epoch(trainee, loader, epoch, progress, None, after_step)
        patches += epoch_patches
        clock(patches)  # the epoch's last step (train_one_epoch hands it to no hook)
        done += want
