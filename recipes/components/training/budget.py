"""How long a segmentation run trains: epochs, their length in steps, and where it ends.

An epoch is one pass over the training set (the volumes' random crops, or with
``training.patch_stride`` the patch grid of every volume); ``training.steps_per_epoch`` caps
it at that many optimizer steps (each epoch draws its own permutation, so a capped epoch is
a fresh sample of the set); ``training.max_steps`` ends the run after that many optimizer
steps, inside an epoch if need be, whatever ``max_epochs`` says. Every epoch but the last
has the same length, so the batches of epoch ``e`` are a function of ``e`` alone: a resume
at any step finds the same epoch boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _positive(tcfg: Any, key: str) -> int | None:
    value = tcfg.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"training.{key} must be an integer >= 1 or null, got {value!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """A run's length from ``training`` and the loader's batches in one full pass."""

    full_batches: int  # batches of a full pass over the training set (this process's)
    accumulate: int  # batches per optimizer step
    max_epochs: int
    steps_cap: int | None = None  # training.steps_per_epoch
    max_steps: int | None = None

    @classmethod
    def of(cls, tcfg: Any, full_batches: int) -> Budget:
        if full_batches < 1:
            raise ValueError("the training set yields no batch: no volume or patch to train on")
        return cls(
            full_batches,
            max(1, int(tcfg.get("accumulate_steps", 1))),
            int(tcfg.max_epochs),
            _positive(tcfg, "steps_per_epoch"),
            _positive(tcfg, "max_steps"),
        )

    @property
    def epoch_batches(self) -> int:
        """Batches of a (capped) epoch."""
        if self.steps_cap is None:
            return self.full_batches
        return min(self.full_batches, self.steps_cap * self.accumulate)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.epoch_batches / self.accumulate)

    @property
    def total_steps(self) -> int:
        steps = self.max_epochs * self.steps_per_epoch
        return steps if self.max_steps is None else min(steps, self.max_steps)

    @property
    def epochs(self) -> int:
        """The run's last epoch (the one ``max_steps`` ends in, else ``max_epochs``)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def batches(self, epoch: int) -> int | None:
        """Batches of ``epoch`` (1-based); None: a full pass over the training set."""
        left = self.total_steps - (epoch - 1) * self.steps_per_epoch
        n = min(self.epoch_batches, left * self.accumulate)
        return None if n >= self.full_batches else n

    def describe(self) -> dict[str, int]:
        """What is logged (params) and what a profile predicts from."""
        return {
            "epoch_batches": self.epoch_batches,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "epochs": self.epochs,
        }
