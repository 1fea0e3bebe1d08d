"""Crash-safe training checkpoints that a run can resume from exactly.

A checkpoint holds everything a resumed run needs to continue as if it had not stopped:
weights, optimizer and scheduler state, counters, the best metric so far, and the RNG states
of python, numpy and torch. Files are written to a temporary file in the same directory and
moved into place with ``os.replace``, so a crash mid-write (or a kill from the runner)
leaves the previous ``last.pt`` intact rather than a truncated one.

A *step* checkpoint (``last.pt`` written inside an epoch: on a stop request, or every
``training.checkpoint_every_steps``) also holds ``in_epoch``: the epoch in progress, the
batches it has consumed and its running sums, so that a resume trains the rest of that
epoch on the same batches in the same order.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from recipes.components.models.build import load_plain_state_dict, plain_state_dict
from recipes.components.training.optim import Schedule, fast_forward

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class Progress:
    """Counters carried across epochs; ``epoch`` counts completed epochs."""

    epoch: int = 0
    global_step: int = 0
    # The best value of training.select.metric so far, at best_epoch (best.pt's epoch), and
    # the val Dice of that epoch.
    best_metric: float = -1.0
    best_epoch: int | None = None
    best_val_dice: float | None = None
    # Last epoch whose val_dice beat the best by more than early_stopping.min_delta.
    improved_epoch: int | None = None
    # Set by a step checkpoint: where the epoch after ``epoch`` stood (loop.EpochState).
    in_epoch: dict[str, Any] | None = None


def rng_states() -> dict[str, Any]:
    """RNG states as plain types and tensors, so ``torch.load(weights_only=True)`` reads them."""
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them.

    An interrupt raised inside ``torch.save`` surfaces from its C++ writer as a RuntimeError
    ("unexpected pos ..."), so a cancelled cell would read as failed and the checkpoint of
    that epoch would be lost. Deferring it lets the write finish; the signal then arrives
    as it would have, a moment later. Python runs signal handlers on the main thread only,
    so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling, fsync, then ``os.replace`` over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: Optimizer,
    schedule: Schedule,
    progress: Progress,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Save everything; ``scaler`` (fp16 training) too, so its loss scale continues."""
    atomic_save(
        {
            "model": plain_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.scheduler.state_dict(),
            "schedule_total_steps": schedule.total_steps,
            "epoch": progress.epoch,
            "global_step": progress.global_step,
            "best_metric": progress.best_metric,
            "best_epoch": progress.best_epoch,
            "best_val_dice": progress.best_val_dice,
            "improved_epoch": progress.improved_epoch,
            "in_epoch": progress.in_epoch,
            "rng": rng_states(),
            **(
                {"scaler": scaler.state_dict()}
                if scaler is not None and scaler.is_enabled()
                else {}
            ),
        },
        path,
    )


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: Optimizer,
    schedule: Schedule,
    scaler: torch.amp.GradScaler | None = None,
) -> Progress:
    """Restore everything saved by :func:`save_checkpoint` in place; return the counters.

    When the schedule's length differs from the saved one (``max_epochs`` changed), the saved
    scheduler state would describe the old schedule, so the new one is replayed to the saved
    step instead.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    load_plain_state_dict(model, ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    progress = Progress(
        epoch=ckpt["epoch"],
        global_step=ckpt["global_step"],
        best_metric=ckpt["best_metric"],
        best_epoch=ckpt["best_epoch"],
        best_val_dice=ckpt.get("best_val_dice"),
        improved_epoch=ckpt.get("improved_epoch"),
        in_epoch=ckpt.get("in_epoch"),
    )
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt["schedule_total_steps"] == schedule.total_steps:
        schedule.scheduler.load_state_dict(ckpt["scheduler"])
    else:
        done = progress.global_step if schedule.interval == "step" else progress.epoch
        fast_forward(schedule, done)
    set_rng_states(ckpt["rng"])
    return progress
