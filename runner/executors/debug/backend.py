"""In-process execution through submitit's DebugExecutor: one cell at a time, in the
runner's own process, so breakpoints and debuggers work inside the recipe."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import submitit

from runner.executors.base import Backend
from runner.job.cell import CellJob


class DebugBackend(Backend):
    kind = "debug"
    modes = ("follow",)  # cells run in this very process, under its debugger

    @property
    def slots(self) -> int:
        return 1

    def submit(self, jobs: Sequence[CellJob]) -> list[submitit.Job[Any]]:
        executor = submitit.DebugExecutor(folder=self.folder)
        return [executor.submit(job) for job in jobs]

    def finished(self, job: submitit.Job[Any]) -> bool:
        if sys.stdin.isatty():
            # Runs the cell; on error submitit opens a post-mortem debugger. The job has
            # already recorded its failure in the ledger.
            with contextlib.suppress(Exception):
                job.results()
        else:
            job.exception()  # runs the cell; failures are recorded by the job itself
        return True

    def end_reason(self, job: submitit.Job[Any]) -> str:
        exc = job.exception()
        return f"lost: {type(exc).__name__}: {exc}" if exc else "lost"
