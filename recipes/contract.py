"""What a runner hands to a recipe's ``train`` and what it gets back.

Kept free of torch and MLflow imports so that planning a matrix stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from omegaconf import DictConfig

TrainStatus = Literal["done", "diverged"]


@dataclass
class RunContext:
    """Where a recipe logs and checkpoints when a runner drives it.

    tracking_uri / run_id: an MLflow run that already exists (the runner created it with its
        name and tags); the recipe logs params, metrics and artifacts into it and must not
        end it: the runner sets its final status.
    checkpoint_dir: the recipe saves ``last.pt`` (and ``best.pt``) here and, when
        ``last.pt`` exists at start, resumes from it.
    progress: called after every epoch with a small dict (epoch, max_epochs, train_loss,
        val_dice when validated) so that the runner can show live progress and heartbeats.
    spool_dir: where metrics go when the tracking server can't be reached (one JSON line
        each); ``runner sync`` uploads them later. None: such failures are errors.
    """

    tracking_uri: str
    run_id: str
    checkpoint_dir: Path
    progress: Callable[[dict[str, Any]], None] | None = None
    spool_dir: Path | None = None


@dataclass
class TrainResult:
    """The outcome of one training run.

    status: "done" when training ran to its end (or stopped early on purpose),
        "diverged" when the loss became NaN/inf: such a run is never "done".
    """

    status: TrainStatus
    epochs_completed: int
    best_val_dice: float | None = None
    best_epoch: int | None = None
    resumed_from_epoch: int | None = None
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class TrainFn(Protocol):
    def __call__(self, cfg: DictConfig, ctx: RunContext | None = None) -> TrainResult: ...
