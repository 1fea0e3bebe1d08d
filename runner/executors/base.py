"""The common surface of executor backends (one small module per backend, as in submitit).

A backend turns :class:`~runner.job.CellJob` payloads into submitit jobs. The scheduler in
:mod:`runner.sweep.queue` decides *which* cells go out and records them in the ledger; the
backend decides *how* they run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import submitit

from runner.job import CellJob


class Backend(ABC):
    kind: ClassVar[str]
    #: Whether ``sweep`` follows the cells to their end by default (local runs live in the
    #: sweep's session; a cluster's do not need it).
    waits: ClassVar[bool] = True
    #: Whether a background scheduler process may keep this backend's queue when the sweep
    #: does not follow (False for backends that run cells in the sweep's own process).
    detachable: ClassVar[bool] = True

    def __init__(self, options: Any, folder: Path) -> None:
        self.options = options
        self.folder = folder

    @property
    def slots(self) -> int | None:
        """Cells the runner may have in flight at once; None lets the backend queue them."""
        return None

    @abstractmethod
    def submit(self, jobs: Sequence[CellJob]) -> list[submitit.Job[Any]]:
        """Start (or enqueue) these jobs; one submitit job per cell, in order."""

    def finished(self, job: submitit.Job[Any]) -> bool:
        return job.done()

    def end_reason(self, job: submitit.Job[Any]) -> str:
        """Why a job that ended without reporting an outcome is lost (for the ledger)."""
        tail = ""
        try:
            tail = (job.stderr() or "")[-800:]
        except Exception:
            tail = ""
        return f"lost: job {job.job_id} ended ({job.state}) without reporting an outcome" + (
            f"; stderr tail: {tail}" if tail else ""
        )

    def cancel(self, job_ids: list[str]) -> list[str]:
        """Ask these jobs to stop (SIGINT: the cell checkpoints, records itself cancelled and
        ends its MLflow run as KILLED); return the ids it could signal. Default: nothing."""
        return []

    def alive(self, job_ids: list[str]) -> list[str]:
        """Those of these jobs of which a process still runs. Default: none known."""
        return []

    def kill(self, job_ids: list[str]) -> None:  # noqa: B027 - optional hook
        """Stop these jobs now, every process of them (after ``cancel``'s grace period)."""

    def release(self, job: submitit.Job[Any]) -> None:  # noqa: B027 - optional hook
        """Give back what ``submit`` reserved for this job (a GPU, a slot)."""
