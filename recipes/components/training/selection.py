"""Which validation metric chooses a run's best epoch, and the unit patiences are counted in.

``training.select: {metric, mode}`` names the validation metric that picks ``best.pt``, is
early stopping's monitor unless ``training.early_stopping.monitor`` names another, and is
what the runner's report ranks groups by and ``--best`` picks cells by (the recipe logs it
as params and returns the best value in :class:`~recipes.contract.TrainResult`). The default,
``val_dice`` / ``max``, is the recipe's original behaviour; the EM study selects on
``val_adapted_rand_error`` / ``min``. ``mode: auto`` minimises losses, errors and distances.

Patience units (``patience_unit: epochs | validations``, in ``training.early_stopping`` and
``scheduler`` for ``plateau``): validations run every ``training.val_interval`` epochs, so a
patience in epochs is checked at validations: early stopping stops at the first validation
at least ``patience`` epochs after the last gain (PyTorch Lightning's count when it validates
every epoch), and ReduceLROnPlateau (which counts its steps, one per validation) gets
``patience // val_interval`` validations, i.e. it reduces at the first validation more than
``patience`` epochs after the last gain, as torch does when stepped every epoch. A config
without the key counts epochs.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

UNITS = ("epochs", "validations")
# Monitored metrics where lower is better under mode "auto".
LOWER_IS_BETTER = re.compile(r"(loss|error|hd95|voi)", re.IGNORECASE)


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """``min`` or ``max`` for a monitored metric; ``auto`` decides by its name."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode must be auto, min or max, got {mode!r}")
    return "min" if LOWER_IS_BETTER.search(monitor) else "max"


def patience_unit(section: Mapping[str, Any] | None, where: str) -> str:
    """``<where>.patience_unit`` (default epochs), checked."""
    unit = str((section or {}).get("patience_unit") or "epochs")
    if unit not in UNITS:
        close = difflib.get_close_matches(unit, UNITS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{where}.patience_unit={unit!r}; choose epochs or validations{hint}")
    return unit


def patience_epochs(section: Mapping[str, Any] | None, val_interval: int, where: str) -> int | None:
    """The patience of ``section`` in epochs (None: no patience)."""
    patience = (section or {}).get("patience")
    if patience is None:
        return None
    if patience_unit(section, where) == "validations":
        return int(patience) * int(val_interval)
    return int(patience)


def plateau_patience(sched_cfg: Mapping[str, Any], val_interval: int) -> int:
    """ReduceLROnPlateau's own patience (it counts its steps, one per validation)."""
    patience = int(sched_cfg.get("patience") or 0)
    if patience_unit(sched_cfg, "scheduler") == "validations":
        return patience
    return patience // max(1, int(val_interval))


@dataclass(frozen=True)
class Selection:
    """``training.select``: the metric that chooses the best epoch and which way is better."""

    metric: str = "val_dice"
    mode: str = "max"

    @classmethod
    def from_config(cls, tcfg: Mapping[str, Any]) -> Selection:
        section = tcfg.get("select") or {}
        metric = str(section.get("metric") or "val_dice")
        if not metric.startswith("val_"):
            raise ValueError(
                f"training.select.metric={metric!r}: a validation metric (val_dice, val_loss, "
                "val_adapted_rand_error, ...): the best epoch is chosen on validation"
            )
        try:
            mode = monitor_mode(metric, str(section.get("mode") or "auto"))
        except ValueError:
            raise ValueError(
                f"training.select.mode={section.get('mode')!r}; choose max, min or auto"
            ) from None
        return cls(metric, mode)

    def value(self, metrics: Mapping[str, float]) -> float:
        if self.metric not in metrics:
            raise KeyError(
                f"training.select.metric={self.metric!r} is not a validation metric of this "
                f"run; it has {sorted(k for k in metrics if k.startswith('val_'))}"
            )
        return float(metrics[self.metric])

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet); NaN never does."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best


class BestSoFar(Protocol):
    """What a run's counters keep of its best epoch (``checkpoint.Progress``)."""

    best_metric: float
    best_epoch: int | None
    best_val_dice: float | None


def record_best(
    progress: BestSoFar, selection: Selection, metrics: Mapping[str, float], epoch: int
) -> bool:
    """After a validation: whether it is the best so far by the selection (then recorded,
    with its val Dice, for the ledger and the report beside the selected metric)."""
    value = selection.value(metrics)
    best = progress.best_metric if progress.best_epoch is not None else None
    if not selection.better(value, best):
        return False
    progress.best_metric, progress.best_epoch = value, epoch
    dice = metrics.get("val_dice")
    progress.best_val_dice = None if dice is None else float(dice)
    return True


def best_val_dice(progress: BestSoFar, selection: Selection) -> float | None:
    """The val Dice of the selected epoch (a checkpoint from before the selection kept only
    the best val Dice, its best metric)."""
    if selection.metric == "val_dice" or progress.best_val_dice is None:
        return progress.best_metric if selection.metric == "val_dice" else None
    return progress.best_val_dice


def best_metrics(progress: BestSoFar, selection: Selection) -> dict[str, float]:
    """What a finished run logs of its best epoch: ``best_val_dice`` (the selected epoch's)
    and, selecting on another metric, ``best_<metric>``."""
    out = {f"best_{selection.metric}": progress.best_metric}
    dice = best_val_dice(progress, selection)
    if dice is not None:
        out["best_val_dice"] = dice
    return out
