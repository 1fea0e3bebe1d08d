"""The queue's side of a warm standby (:mod:`runner.job.standby` is the job's).

A queue with slots (local processes) keeps the next cell in line started beside the running
ones: its process does its imports while they train, then waits. When a slot frees, the
standby takes it first (its ``go.json`` written: the slot's GPUs and threads) and the next
cell in line becomes the standby. So a freed slot is busy again within the queue's polling
interval instead of after a whole process start, and the cells still start in queue order.

The standby is submitted like any cell (its ``job.json`` written: it reads as submitted, and
``runner cancel`` stops it as it stops any submitted cell); only one waits at a time. None
is kept for a search that asks its trials as slots free (a trial asked early would be asked
without the results that free slot brings), nor where the backend keeps none
(:meth:`~runner.executors.base.Backend.submit_standby`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runner.executors.base import Backend
from runner.job.cell import CellJob
from runner.plan import Plan

Pair = tuple[CellJob, Any]  # a cell's payload and its submitit job
#: How long a dropped standby's controller may take to end after its task was killed.
DROP_WAIT_S = 5.0


class Standby:
    def __init__(self, plan: Plan, backend: Backend) -> None:
        self.plan = plan
        self.backend = backend
        self.enabled = True
        self.waiting: Pair | None = None

    def keep_one(self, queue: list[CellJob], record: Callable[[CellJob, Any], None]) -> None:
        """When none waits, submit the queue's next cell as the standby (``record``: the
        queue's bookkeeping of a submission) and take it off the queue."""
        if not self.enabled or self.waiting is not None or not queue:
            return
        sj = self.backend.submit_standby(queue[0])
        if sj is None:  # this backend keeps none: never ask again
            self.enabled = False
            return
        job = queue.pop(0)
        record(job, sj)
        self.waiting = (job, sj)

    def wake(self) -> Pair | None:
        """Give a free slot to the waiting standby: its go written, the pair to watch."""
        if self.waiting is None:
            return None
        job, sj = self.waiting
        self.waiting = None
        go = self.backend.wake(sj)
        go.time = time.time()
        self.plan.ledger.cell(job.cell_id).attempt(job.attempt).save(go)
        return job, sj

    def ended(self) -> list[Pair]:
        """The standby, when its process ended while it waited (a cancel, a failed start)."""
        if self.waiting is None or not self.backend.finished(self.waiting[1]):
            return []
        pair, self.waiting = self.waiting, None
        return [pair]

    def drop(self) -> str | None:
        """The queue stops without a slot for it: end the waiting process, which never
        started its cell, and give its attempt back (pending, no attempt: as the queue's
        cells that waited for a slot). Should the attempt hold more than its claim and its
        submission, it is kept, and the cell reads pending once the queue's process is gone
        (:meth:`runner.ledger.CellRecord.state`). Its cell id."""
        if self.waiting is None:
            return None
        job, sj = self.waiting
        self.waiting = None
        self.backend.kill([str(sj.job_id)])
        deadline = time.monotonic() + DROP_WAIT_S  # its controller ends after its task
        while not self.backend.finished(sj) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.backend.finished(sj):
            cell = self.plan.ledger.cell(job.cell_id)
            attempt = cell.attempt(job.attempt)
            if sorted(p.name for p in attempt.dir.iterdir()) == ["claim.json", "job.json"]:
                (attempt.dir / "job.json").unlink()
                cell.release(attempt)
        return job.cell_id
