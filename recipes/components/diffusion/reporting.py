"""What the diffusion recipe reports between validations: the windowed training means and
throughput, and the validation's example slices as a picture."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from recipes.components.diffusion.validation import Validation, save_examples
from recipes.components.training.distributed import Dist
from recipes.components.training.mlflow_logging import RunLogger
from recipes.components.training.step import LoaderClock, throughput

__all__ = ["StepWindow", "log_examples"]

log = logging.getLogger(__name__)


class StepWindow:
    """Means of the step losses between two logging points, and the slice throughput."""

    NAMES: ClassVar[dict[str, str]] = {
        "loss": "train_loss",
        "mse": "train_mse",
        "dice": "train_x0_dice_loss",
        "bce": "train_x0_bce",
        "cal": "train_calibration",
    }

    def __init__(
        self,
        dist: Dist | None = None,
        patch: Sequence[int] = (1,),
        device: torch.device | None = None,
    ) -> None:
        self.dist, self.patch = dist or Dist(), tuple(int(p) for p in patch)
        self.device = device or torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.slices, self.start = 0, 0, time.perf_counter()
        self.wait_s = 0.0  # waiting for the loader (added by the recipe's batch iterator)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (called by all ranks at the same step): the sums as the
        ranks' mean, so that ranks resuming from rank 0's checkpoint flush exact means."""
        sums = {k: self.dist.mean(v) for k, v in sorted(self.sums.items())}
        return {"sums": sums, "steps": self.steps, "slices": self.slices}

    def load(self, state: dict[str, Any]) -> None:
        self.sums, self.steps, self.slices = dict(state["sums"]), state["steps"], state["slices"]

    def add(self, parts: dict[str, float], slices: int) -> None:
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps, self.slices = self.steps + 1, self.slices + slices

    def flush(self) -> dict[str, float]:
        """The means since the last flush, over all ranks (called by all at the same step);
        ``samples_per_s``: all ranks' slices."""
        seconds = time.perf_counter() - self.start
        mean = self.dist.mean
        out = {self.NAMES[k]: mean(v) / max(1, self.steps) for k, v in sorted(self.sums.items())}
        # Slices (and voxels) of all ranks a second; the loader wait is rank 0's share, as
        # the segmentation recipe reports it (step.throughput).
        out.update(
            throughput(
                LoaderClock(None, self.wait_s),
                seconds,
                self.dist.total(self.slices),
                self.patch,
                self.device,
            )
        )
        out["steps_per_s"] = self.steps / seconds
        self.reset()
        return out


def log_examples(logger: RunLogger, val: Validation, step: int) -> None:
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
