"""``runner cancel``: stop a matrix's cells that are queued, submitted or running.

The request is recorded first (``cancel.json`` in the cell's current attempt), so a cell
shows as cancelled even if its process dies without a word, and a sweep that has the cell
still in its queue will not start it; then the executor is asked to stop the job.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from runner.executors import make_backend
from runner.schedule import Plan
from runner.select import for_cancel


@dataclass
class CancelOutcome:
    cancelled: list[str] = field(default_factory=list)
    signalled: list[str] = field(default_factory=list)


def cancel(plan: Plan, ids: list[str] | None) -> CancelOutcome:
    states = plan.states()
    cells = for_cancel(plan.cells, states, ids)
    outcome = CancelOutcome()
    job_ids = []
    for cell in cells:
        record = plan.ledger.cell(cell.id)
        attempt = record.attempts()[-1]
        attempt.write("cancel", {"time": time.time(), "pid": os.getpid()})
        outcome.cancelled.append(cell.id)
        if states[cell.id].job_id:
            job_ids.append(str(states[cell.id].job_id))
    if job_ids:
        backend = make_backend(plan.matrix.spec.executor, plan.ledger.logs_dir)
        outcome.signalled = backend.cancel(job_ids)
    return outcome
