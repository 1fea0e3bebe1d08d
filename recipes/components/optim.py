"""Optimizer and learning-rate scheduler factories for ``cfg.optimizer`` / ``cfg.scheduler``.

A scheduler is stepped either after every optimizer step or after every epoch
(``scheduler.interval``); the trainer needs to know which, and how long the schedule is,
so that a resumed run with a different ``max_epochs`` can re-derive its schedule.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.optimizers import WarmupCosineSchedule
from omegaconf import DictConfig, OmegaConf
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import ConstantLR, LRScheduler, OneCycleLR

OPTIMIZERS: dict[str, type[Optimizer]] = {"adamw": AdamW, "sgd": SGD}

Interval = Literal["step", "epoch"]


@dataclass
class Schedule:
    """A scheduler plus when to step it and how many steps it spans in total."""

    scheduler: LRScheduler
    interval: Interval
    total_steps: int


def build_optimizer(opt_cfg: DictConfig, params: Iterable[torch.nn.Parameter]) -> Optimizer:
    """``OPTIMIZERS[name](params, **rest of cfg)``."""
    kwargs: dict[str, Any] = OmegaConf.to_container(opt_cfg, resolve=True)  # type: ignore[assignment]
    name = kwargs.pop("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return OPTIMIZERS[name](params, **kwargs)


def build_scheduler(
    sched_cfg: DictConfig, optimizer: Optimizer, steps_per_epoch: int, max_epochs: int
) -> Schedule:
    """Build the schedule for a run of ``max_epochs`` epochs of ``steps_per_epoch`` steps."""
    name = sched_cfg.name
    interval: Interval = sched_cfg.get("interval", "step")
    total = max_epochs * (steps_per_epoch if interval == "step" else 1)
    scheduler: LRScheduler
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
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose onecycle, warmup_cosine, constant")
    return Schedule(scheduler, interval, total)


def fast_forward(schedule: Schedule, steps: int) -> None:
    """Advance a freshly built scheduler by ``steps`` without training.

    Used on resume when the schedule's length changed (e.g. ``max_epochs`` raised): the saved
    scheduler state describes the old length, so the new schedule is replayed instead.
    """
    with warnings.catch_warnings():
        # "lr_scheduler.step() before optimizer.step()": intended here.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(steps, schedule.total_steps)):
            schedule.scheduler.step()
