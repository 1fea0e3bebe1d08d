"""When to stop a run early: a Dice that is good enough, patience run out, a monitored metric
that has converged (``threshold``) or collapsed (``divergence_threshold``).

``training.early_stopping.monitor`` is null (the default: ``training.select.metric``, with
its mode; ``val_dice`` unless the run selects on another, the original behaviour),
``val_loss`` or any validation metric (``val_adapted_rand_error``...); ``mode: auto``
minimises losses, errors and distances and maximises the rest, as PyTorch Lightning's
``EarlyStopping`` does with ``mode``. ``patience`` counts ``patience_unit``: epochs (the
default) or validations (``selection.py``). ``threshold``: stop as converged
once the monitor reaches it (Lightning's ``stopping_threshold``). ``divergence_threshold``:
stop with status ``diverged`` once the monitor becomes worse than it after having been
better (a run that starts above it is not collapsing, it has not started), or is not finite.

Patience on ``val_dice`` (when the run also selects on it) is counted by the checkpointed
``Progress``; on any other monitor
the history of monitored values is kept in ``early_stopping.json`` beside ``last.pt``,
written before it, so a resumed run replays exactly the same decisions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipes.components.training.checkpoint import Progress
from recipes.components.training.selection import (
    Selection,
    monitor_mode,
    patience_epochs,
    patience_unit,
)

HISTORY_FILE = "early_stopping.json"


def early_stop_reason(
    es: DictConfig | None,
    progress: Progress,
    metrics: dict[str, float],
    epoch: int,
    val_interval: int,
) -> str | None:
    """Why to stop after this validation, or None. Call before ``progress`` records a best.

    "Good enough": the target Dice is reached. Patience: counted (in ``patience_unit``) since
    the last gain of more than ``min_delta`` over the best so far (the first validation
    counts as a gain).
    """
    if not es:
        return None
    dice = metrics["val_dice"]
    if progress.improved_epoch is None or dice > progress.best_metric + float(es.min_delta):
        progress.improved_epoch = epoch
    if es.get("good_enough") is not None and dice >= float(es.good_enough):
        return f"val_dice {dice:.4g} >= good_enough {es.good_enough}"
    epochs = patience_epochs(es, val_interval, "training.early_stopping")
    if epochs is not None and epoch - progress.improved_epoch >= epochs:
        return f"no val_dice gain > {es.min_delta} in {_patience_text(es)}"
    return None


def _patience_text(es: Mapping[str, Any]) -> str:
    return f"{es.get('patience')} {patience_unit(es, 'training.early_stopping')}"


@dataclass
class EarlyStop:
    """A decision to stop after this validation: converged, out of patience, good enough,
    or (``diverged``) collapsed; not to be confused with the runner's ``StopRequest``."""

    reason: str
    diverged: bool = False


class EarlyStopping:
    """``training.early_stopping`` on its monitor; see the module doc."""

    def __init__(
        self, es: Mapping[str, Any] | None, val_interval: int, selection: Selection | None = None
    ) -> None:
        self.es = dict(es or {})
        self.val_interval = int(val_interval)
        self.selection = selection or Selection()
        self.monitor = str(self.es.get("monitor") or self.selection.metric)
        mode = str(self.es.get("mode") or "auto")
        if mode == "auto" and self.monitor == self.selection.metric:
            mode = self.selection.mode  # the selection's direction, not a guess by name
        self.mode = monitor_mode(self.monitor, mode)
        # Progress counts val_dice's patience only while it also holds val_dice's best.
        self.legacy = self.monitor == "val_dice" == self.selection.metric
        self.history: list[tuple[int, float]] = []
        patience_epochs(self.es, self.val_interval, "training.early_stopping")  # checked now

    def _better(self, a: float, b: float, delta: float = 0.0) -> bool:
        return a < b - delta if self.mode == "min" else a > b + delta

    def _reached(self, value: float, threshold: float) -> bool:
        return value <= threshold if self.mode == "min" else value >= threshold

    def load(self, ckpt_dir: Path, epoch: int) -> None:
        """The history of a resumed run, up to the checkpoint's ``epoch``."""
        path = ckpt_dir / HISTORY_FILE
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("monitor") == self.monitor:
                self.history = [(int(e), float(v)) for e, v in saved["history"] if e <= epoch]

    def save(self, ckpt_dir: Path) -> None:
        """Atomically; call before saving ``last.pt`` of the same epoch."""
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_dir / f".{HISTORY_FILE}.tmp"
        tmp.write_text(json.dumps({"monitor": self.monitor, "history": self.history}))
        os.replace(tmp, ckpt_dir / HISTORY_FILE)

    def update(
        self, progress: Progress, metrics: Mapping[str, float], epoch: int
    ) -> EarlyStop | None:
        """Record this validation; why to stop now, or None. Call before ``progress``
        records a best (as :func:`early_stop_reason`)."""
        if not self.es:
            return None
        if self.monitor not in metrics:
            raise KeyError(
                f"training.early_stopping.monitor={self.monitor!r} is not a validation metric "
                f"of this run; it has {sorted(k for k in metrics if k.startswith('val_'))}"
            )
        value = float(metrics[self.monitor])
        earlier = [v for _, v in self.history]
        self.history.append((epoch, value))
        legacy = None
        if self.legacy:  # the original rule, its patience counted in Progress
            es = DictConfig(self.es)
            legacy = early_stop_reason(es, progress, dict(metrics), epoch, self.val_interval)
        div = self.es.get("divergence_threshold")
        if div is not None:
            was_good = any(self._better(v, float(div)) for v in earlier)
            if not math.isfinite(value) or (was_good and not self._better(value, float(div))):
                return EarlyStop(f"{self.monitor} {value:.4g} diverged past {div}", diverged=True)
        threshold = self.es.get("threshold")
        if threshold is not None and self._reached(value, float(threshold)):
            return EarlyStop(f"{self.monitor} {value:.4g} reached threshold {threshold}")
        if legacy:
            return EarlyStop(legacy)
        return None if self.legacy else self._patience(metrics)

    def _patience(self, metrics: Mapping[str, float]) -> EarlyStop | None:
        good = self.es.get("good_enough")
        if good is not None and "val_dice" in metrics and metrics["val_dice"] >= float(good):
            return EarlyStop(f"val_dice {metrics['val_dice']:.4g} >= good_enough {good}")
        patience = patience_epochs(self.es, self.val_interval, "training.early_stopping")
        if patience is None:
            return None
        delta = float(self.es.get("min_delta") or 0.0)
        best, improved = self.history[0][1], self.history[0][0]
        for epoch, value in self.history[1:]:
            if self._better(value, best, delta):
                improved = epoch
            if self._better(value, best):
                best = value
        last = self.history[-1][0]
        if last - improved >= patience:
            return EarlyStop(f"no {self.monitor} gain > {delta} in {_patience_text(self.es)}")
        return None
