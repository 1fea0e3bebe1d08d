"""The common surface of executor backends (one small module per backend, as in submitit).

A backend turns :class:`~runner.job.cell.CellJob` payloads into submitit jobs. The scheduler in
:mod:`runner.sweep.queue` decides *which* cells go out and records them in the ledger; the
backend decides *how* they run.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import submitit

from runner.job.cell import CellJob
from runner.ledger import Go


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


#: How ``runner sweep`` runs cells: ``follow``: submit them as slots free up and watch each
#: to its end, in the sweep's process; ``background``: a detached scheduler keeps the queue
#: (the runner's own: local processes, Docker GPUs) and the sweep returns once it has
#: claimed the cells; ``return``: the executor keeps the queue (a cluster) and the sweep
#: returns once the cells are submitted.
SweepMode = Literal["follow", "background", "return"]


class Backend(ABC):
    kind: ClassVar[str]
    #: The payload this backend runs for a cell (its job side): the sweep builds these.
    job_class: ClassVar[type[CellJob]] = CellJob
    #: How a sweep may run this backend's cells, its default first (:data:`SweepMode`).
    modes: ClassVar[tuple[SweepMode, ...]] = ("follow", "background")

    def __init__(self, options: Any, folder: Path) -> None:
        self.options = options
        self.folder = folder

    @property
    def slots(self) -> int | None:
        """Cells the runner may have in flight at once; None lets the backend queue them."""
        return None

    @classmethod
    def unreachable(cls, options: Any) -> str | None:
        """What keeps this executor from taking jobs now (a cluster controller that does not
        answer), asked without creating anything: ``plan`` warns with it. Default: nothing."""
        return None

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Raise a RunnerError saying what is wrong when this backend can't take jobs now
        (no cluster controller, no engine). Called before anything is claimed or written,
        so that a submission that can't happen leaves no trace in the ledger."""

    @abstractmethod
    def submit(self, jobs: Sequence[CellJob]) -> list[submitit.Job[Any]]:
        """Start (or enqueue) these jobs; one submitit job per cell, in order."""

    def submit_standby(self, job: CellJob) -> submitit.Job[Any] | None:
        """Start ``job`` ahead of a free slot, warming up and waiting for its go
        (:mod:`runner.job.standby`); None where this backend keeps no standby (a process of
        it could not take a slot's GPUs after it started). Default: none."""
        return None

    def wake(self, job: submitit.Job[Any]) -> Go:
        """Reserve a free slot's resources for a standby: what its go carries."""
        raise NotImplementedError(f"executor '{self.kind}' keeps no standby")

    def wait(self, jobs: Sequence[submitit.Job[Any]], timeout_s: float) -> None:
        """Return when one of ``jobs`` may have ended, or after ``timeout_s``. Default: the
        timeout (the queue then looks again)."""
        time.sleep(timeout_s)

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

    @classmethod
    def usage(cls, job_ids: list[str]) -> tuple[dict[str, tuple[float, int]], str | None]:
        """What the executor's accounting says these jobs used: ``{job id: (elapsed seconds
        over all its runs, GPUs)}``, and a problem when it could not answer. Default: none
        kept (the ledger's figures stand)."""
        return {}, None

    def release(self, job: submitit.Job[Any]) -> None:  # noqa: B027 - optional hook
        """Give back what ``submit`` reserved for this job (a GPU, a slot)."""
