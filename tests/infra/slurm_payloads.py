"""Small payloads that the SLURM tests send through the real cluster.

They live in an importable module (not in the test file) because the job process unpickles
them by reference: it imports ``tests.infra.slurm_payloads`` from the repository root, which
the tests put on PYTHONPATH through the executor's ``setup`` lines.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from runner.executors.slurm.job import SlurmCellJob


def sleep_and_report(seconds: float, tag: str) -> dict[str, Any]:
    """Sleep, then say when and where it ran and which GPUs SLURM gave it."""
    start = time.time()
    time.sleep(seconds)
    return {
        "tag": tag,
        "start": start,
        "end": time.time(),
        "host": socket.gethostname(),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS"),
        "wrapped": os.environ.get("RUNNER_TEST_WRAPPED"),
    }


def fail_with(message: str) -> None:
    raise ValueError(message)


class CountingWork(Checkpointable):
    """Work that survives requeues (progress is kept in a file): it counts seconds until it
    has been requeued once, then ``after_requeue_s`` more, so it always overruns its first
    time limit and needs exactly one requeue, however early SLURM's warning comes."""

    def __init__(self, progress_file: str, after_requeue_s: int = 3) -> None:
        self.progress_file = progress_file
        self.after_requeue_s = after_requeue_s

    def __call__(self) -> dict[str, Any]:
        path = Path(self.progress_file)
        done = json.loads(path.read_text())["done"] if path.exists() else 0
        resumed_at = done
        while not (_restarts() >= 1 and done - resumed_at >= self.after_requeue_s):
            time.sleep(1)
            done += 1
            path.write_text(json.dumps({"done": done}))
        return {"done": done, "resumed_at": resumed_at, "restarts": _restarts()}


def _restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


# --- a stand-in recipe, to drive SlurmCellJob (ledger, MLflow, requeue) without torch ----------


class _FakeRecipe:
    """Quacks like runner.recipe.Recipe: compose() and train_fn()."""

    def __init__(self, epochs: int, epoch_s: float) -> None:
        self.epochs, self.epoch_s = epochs, epoch_s

    def compose(self, overrides: list[str]) -> dict[str, Any]:
        return {"overrides": list(overrides)}

    def train_fn(self) -> Any:
        return lambda cfg, ctx: _fake_train(ctx, self.epochs, self.epoch_s)


def _fake_train(ctx: Any, epochs: int, epoch_s: float) -> Any:
    """Epochs of sleeping that checkpoint to last.pt and resume from it, like the recipe.

    Once the job has been requeued it stops two epochs later ("converged"), so that the
    test needs one requeue whenever SLURM's warning comes.
    """
    from mlflow import MlflowClient

    from recipes.contract import TrainResult

    client = MlflowClient(ctx.tracking_uri)
    last = Path(ctx.checkpoint_dir) / "last.pt"
    start = json.loads(last.read_text())["epoch"] if last.exists() else 0
    epoch = start
    while epoch < epochs and not (_restarts() >= 1 and epoch >= start + 2):
        time.sleep(epoch_s)
        epoch += 1
        client.log_metric(ctx.run_id, "epoch_done", epoch, step=epoch)
        last.parent.mkdir(parents=True, exist_ok=True)
        tmp = last.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": epoch}))
        tmp.replace(last)
        if ctx.progress:
            ctx.progress({"epoch": epoch, "max_epochs": epochs})
    return TrainResult(
        "done", epoch, best_val_dice=0.5, best_epoch=epoch, resumed_from_epoch=start or None
    )


@dataclass
class FakeRecipeCellJob(SlurmCellJob):
    """SlurmCellJob whose recipe is :class:`_FakeRecipe` (patched in the job's process only)."""

    fake_epochs: int = 3
    fake_epoch_s: float = 1.0

    def __call__(self) -> dict[str, Any]:
        from runner import recipe

        fake = _FakeRecipe(self.fake_epochs, self.fake_epoch_s)
        recipe.Recipe.load = classmethod(lambda cls, name: fake)  # type: ignore[method-assign]
        return super().__call__()
