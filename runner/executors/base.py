"""The common surface of executor backends (one small module per backend, as in submitit).

A backend turns :class:`~runner.job.CellJob` payloads into submitit jobs. The scheduler in
:mod:`runner.sweep.queue` decides *which* cells go out and records them in the ledger; the
backend decides *how* they run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import submitit

from runner.job import CellJob


@dataclass
class JobEnd:
    """How the executor saw a job end that wrote no outcome of its own."""

    state: str  # the ledger state it ends in: "failed" or "cancelled"
    reason: str  # "<kind>: ...": the kind is what `resume --only` selects
    log: str | None = None  # the job's stderr log, when there is one
    tail: str = ""  # its last lines
    #: False when the executor only knows the job is gone (not how): the ledger then
    #: waits until the cell has been silent for its lost-after delay.
    certain: bool = True


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

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Raise a RunnerError saying what is wrong when this backend can't take jobs now
        (no cluster controller, no engine). Called before anything is claimed or written,
        so that a submission that can't happen leaves no trace in the ledger."""

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

    def ended(self, job_ids: list[str]) -> tuple[dict[str, JobEnd], str | None]:
        """The ends of those of ``job_ids`` that are over for the executor, asked in one go
        (for backends whose queue outlives the sweep: a cluster), and a warning when it
        could not be asked in full. Default: nothing known."""
        return {}, None

    def release(self, job: submitit.Job[Any]) -> None:  # noqa: B027 - optional hook
        """Give back what ``submit`` reserved for this job (a GPU, a slot)."""
