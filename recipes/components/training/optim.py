"""Optimizer and learning-rate scheduler factories for ``cfg.optimizer`` / ``cfg.scheduler``.

A scheduler is stepped after every optimizer step, after every epoch, or (``plateau``) after
every validation with a validation metric, ``scheduler.monitor`` (``val_dice`` by default,
``val_loss``, ...; minimised when it is a loss, an error or a distance, else maximised)
(``scheduler.interval``: step | epoch | val); the
trainer needs to know which, and how long the schedule is, so that a resumed run with a
different ``max_epochs`` can re-derive its schedule.

``optimizer.layerwise`` (a role -> multiplier mapping, see ``layerwise.py``) splits the
parameters into one group per module role, each at ``lr * multiplier``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import yaml
from monai.optimizers import Novograd, WarmupCosineSchedule
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    PolynomialLR,
    ReduceLROnPlateau,
    SequentialLR,
)

from recipes.components.models.layerwise import layerwise_param_groups

# monitor_mode and LOWER_IS_BETTER live with the selection; re-exported for older importers.
from recipes.components.training.selection import (  # noqa: F401
    LOWER_IS_BETTER,
    monitor_mode,
    plateau_patience,
)

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adamw": AdamW,
    "sgd": SGD,
    "adam": Adam,
    "novograd": Novograd,
}

Interval = Literal["step", "epoch", "val"]


@dataclass
class Schedule:
    """A scheduler plus when to step it and how many steps it spans in total."""

    scheduler: LRScheduler | ReduceLROnPlateau
    interval: Interval
    total_steps: int
    monitor: str = "val_dice"  # what a "val" schedule is stepped with


def build_optimizer(
    opt_cfg: DictConfig,
    params: Iterable[torch.nn.Parameter] | nn.Module,
    arch: str | None = None,
) -> Optimizer:
    """``OPTIMIZERS[name](params, **rest of cfg)``.

    With ``layerwise`` set, ``params`` must be the model and ``arch`` its ``model.name``.
    """
    kwargs: dict[str, Any] = OmegaConf.to_container(opt_cfg, resolve=True)  # type: ignore[assignment]
    name = kwargs.pop("name")
    layerwise = kwargs.pop("layerwise", None)
    if isinstance(layerwise, str):
        # Matrix axes carry scalars only, so a sweep passes the mapping as a YAML string.
        layerwise = yaml.safe_load(layerwise)
    if layerwise:
        if not isinstance(params, nn.Module) or arch is None:
            raise ValueError("optimizer.layerwise needs the model and its architecture name")
        params = layerwise_param_groups(params, arch, float(kwargs["lr"]), layerwise)
    elif isinstance(params, nn.Module):
        params = params.parameters()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return OPTIMIZERS[name](params, **kwargs)


def build_scheduler(
    sched_cfg: DictConfig,
    optimizer: Optimizer,
    steps_per_epoch: int,
    max_epochs: int,
    total_steps: int | None = None,
    val_interval: int = 1,
) -> Schedule:
    """Build the schedule for a run of ``max_epochs`` epochs of ``steps_per_epoch`` steps,
    validated every ``val_interval`` epochs (``plateau``'s patience in epochs needs it);
    ``total_steps``: the run ends earlier, after that many steps (``training.max_steps``)."""
    name = sched_cfg.name
    interval: Interval = sched_cfg.get("interval", "step")
    total = max_epochs * (steps_per_epoch if interval == "step" else 1)
    if interval == "step" and total_steps is not None:
        total = min(total, total_steps)
    scheduler: LRScheduler | ReduceLROnPlateau
    if name == "onecycle":
        scheduler = OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=sched_cfg.pct_start,
            div_factor=sched_cfg.div_factor,
            final_div_factor=sched_cfg.final_div_factor,
            cycle_momentum=sched_cfg.cycle_momentum,
        )
    elif name == "warmup_cosine":
        scheduler = WarmupCosineSchedule(
            optimizer,
            warmup_steps=round(sched_cfg.warmup_fraction * total),
            t_total=total,
            end_lr=sched_cfg.end_lr,
            warmup_multiplier=sched_cfg.warmup_multiplier,
        )
    elif name == "constant":
        scheduler = ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif name == "cosine_warmup_epochs":
        # Warm-up and decay counted in epochs but stepped per optimizer step, so the lr
        # moves smoothly even with few long epochs.
        warmup = min(total - 1, sched_cfg.warmup_epochs * steps_per_epoch)
        scheduler = SequentialLR(
            optimizer,
            [
                LinearLR(optimizer, sched_cfg.warmup_start_factor, 1.0, total_iters=max(1, warmup)),
                CosineAnnealingLR(
                    optimizer, T_max=max(1, total - warmup), eta_min=sched_cfg.eta_min
                ),
            ],
            milestones=[max(1, warmup)],
        )
    elif name == "poly":
        scheduler = PolynomialLR(optimizer, total_iters=total, power=sched_cfg.power)
    elif name == "plateau":
        # Stepped with the monitored metric after each validation. Its state is
        # history-dependent and cannot be replayed, so total 0: a resume always loads it.
        monitor = str(sched_cfg.get("monitor") or "val_dice")
        scheduler = ReduceLROnPlateau(
            optimizer,
            mode=monitor_mode(monitor, str(sched_cfg.get("mode") or "auto")),  # type: ignore[arg-type]
            factor=sched_cfg.factor,
            patience=plateau_patience(sched_cfg, val_interval),
            threshold=sched_cfg.threshold,
            min_lr=sched_cfg.min_lr,
        )
        return Schedule(scheduler, "val", 0, monitor)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")
    return Schedule(scheduler, interval, total)


SCHEDULERS = ("onecycle", "warmup_cosine", "constant", "cosine_warmup_epochs", "poly", "plateau")


def fast_forward(schedule: Schedule, steps: int) -> None:
    """Advance a freshly built scheduler by ``steps`` without training.

    Used on resume when the schedule's length changed (e.g. ``max_epochs`` raised): the saved
    scheduler state describes the old length, so the new schedule is replayed instead.
    """
    if schedule.interval == "val":
        return
    with warnings.catch_warnings():
        # "lr_scheduler.step() before optimizer.step()": intended here.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(steps, schedule.total_steps)):
            schedule.scheduler.step()
