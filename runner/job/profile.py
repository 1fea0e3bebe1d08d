"""The payload of ``runner profile``: train a cell's first steps where its cells would run,
and write what they cost.

A :class:`ProfileJob` is a :class:`~runner.job.cell.CellJob` (so that every executor's
backend takes it and its signals mean what they mean to a cell) that runs the recipe's
``PROFILE`` entry instead of ``TRAIN``: no MLflow run, no checkpoint, no ledger entry of
the matrix's cells. It writes into its own folder (``cells_dir/<id>/``, under the matrix's
``profile/`` directory): ``progress.json`` after every step (so a process killed by the
kernel still says how far it got) and ``profile.json`` at the end. A DDP cell is profiled
as one process (``training.batch_size`` is per process): ranks other than 0 return at once.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.executors.resources import gpus_from_env
from runner.job.cell import CellJob, current_job_id
from runner.job.process import failure_reason
from runner.ledger import write_json_atomic

PROFILE = "profile.json"
PROGRESS = "progress.json"


def _rank() -> int:
    import submitit

    try:
        return int(submitit.JobEnvironment().global_rank)
    except RuntimeError:  # not a submitit job (a container's entry point)
        return 0


@dataclass
class ProfileMixin:
    """``_run`` of a profile (mixed into each executor's cell job class)."""

    steps: int = 100

    def _run(self) -> dict[str, Any]:
        from runner.recipe import Recipe

        job: Any = self
        os.chdir(job.workdir)
        if _rank() != 0:
            return {"status": "skipped", "reason": "a DDP cell is profiled as one process"}
        folder = Path(job.cells_dir) / job.cell_id
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        where = {
            "host": job.host_name(),
            "job_id": current_job_id(),
            "gpus": gpus_from_env(os.environ),
            "started": started,
        }

        def report(figures: dict[str, Any]) -> None:
            write_json_atomic(folder / PROGRESS, {**figures, "time": time.time()})

        try:
            recipe = Recipe.load(job.recipe)
            profile = recipe.entry("PROFILE")
            if profile is None:
                raise RuntimeError(f"recipe {job.recipe!r} has no PROFILE entry to profile with")
            result = profile(recipe.compose(job.overrides), int(self.steps), report)
        except Exception as exc:  # the profile's own failures are results, not crashes
            reason = failure_reason(exc)
            result = {
                "status": "oom" if reason.startswith("oom:") else "failed",
                "message": reason,
                "traceback": traceback.format_exc()[-3000:],
            }
        result = {**result, **where, "ended": time.time(), "hostname": socket.gethostname()}
        write_json_atomic(folder / PROFILE, result)
        return result


@dataclass
class ProfileJob(ProfileMixin, CellJob):
    """A profile on the local and debug executors."""
