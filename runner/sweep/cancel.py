"""``runner cancel``: stop a matrix's cells that are queued, submitted or running.

1. The request is recorded first (``cancel.json`` in the cell's current attempt): a sweep or
   background scheduler that still has the cell in its queue will not start it, and a job
   that starts anyway sees it and ends at once.
2. The executor interrupts the running jobs (SIGINT, which every job handles whatever
   disposition it inherited): the cell finishes the checkpoint it may be writing, records
   ``cancelled`` and ends its MLflow run as KILLED.
3. After ``grace_s`` whatever still runs is killed outright (every process of the cell), its
   MLflow run is ended as KILLED here, and the request is marked ``stopped``. Until then
   ``status`` shows the cell ``cancelling``, never ``cancelled`` while a process of it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from recipes.contract import SPOOL_FINAL
from runner import tracking
from runner.executors.backends import make_backend
from runner.ledger import TERMINAL, Cancel, CellRecord, Status, write_json_atomic
from runner.plan import Plan
from runner.sweep.selection import for_cancel

GRACE_S = 30.0
#: After a hard kill, how long to wait for the processes to be reaped.
KILL_WAIT_S = 15.0
POLL_S = 0.5


@dataclass
class CancelOutcome:
    cancelled: list[str] = field(default_factory=list)
    signalled: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    #: Jobs still running after the hard kill (an unreachable engine or cluster).
    still_running: list[str] = field(default_factory=list)


def cancel(
    plan: Plan,
    ids: list[str] | None,
    grace_s: float = GRACE_S,
    say: Callable[[str], None] | None = None,
) -> CancelOutcome:
    states = plan.states()
    cells = for_cancel(plan.cells, states, ids)
    outcome = CancelOutcome()
    jobs: dict[str, CellRecord] = {}  # job id -> its cell
    records = []
    for cell in cells:
        record = plan.ledger.cell(cell.id)
        attempt = record.attempts()[-1]
        attempt.save(Cancel(time=time.time(), pid=os.getpid()))
        outcome.cancelled.append(cell.id)
        records.append(record)
        if states[cell.id].job_id:
            jobs[str(states[cell.id].job_id)] = record
    if jobs:
        backend = make_backend(plan.matrix.spec.executor, plan.ledger.logs_dir)
        if grace_s > 0:
            outcome.signalled = backend.cancel(list(jobs))
            running = _wait_gone(backend.alive, outcome.signalled, grace_s)
        else:  # no grace: nothing to wait for, kill what runs
            running = backend.alive(list(jobs))
        if running:
            if say:
                say(f"{len(running)} jobs still run after {grace_s:.0f} s: killing them")
            backend.kill(running)
            outcome.killed = running
            outcome.still_running = _wait_gone(backend.alive, running, KILL_WAIT_S)
    for record in records:
        job_id = next((j for j, r in jobs.items() if r is record), None)
        if job_id not in outcome.still_running:
            _mark_stopped(record, plan.tracking_uri)
    return outcome


def _wait_gone(
    alive: Callable[[list[str]], list[str]], job_ids: list[str], wait_s: float
) -> list[str]:
    """Poll until none of ``job_ids`` runs or ``wait_s`` passed; return those still running."""
    deadline = time.monotonic() + wait_s
    running = alive(job_ids) if job_ids else []
    while running and time.monotonic() < deadline:
        time.sleep(POLL_S)
        running = alive(running)
    return running


def _mark_stopped(record: CellRecord, tracking_uri: str) -> None:
    """The cell's processes are gone: say so in the request, and make sure its MLflow run is
    ended as KILLED: the job could not when it was killed or never started, and its own
    attempt can fail (a store locked by a writer that was killed inside a transaction)."""
    attempt = record.attempts()[-1]
    request = attempt.load(Cancel) or Cancel(time=time.time())
    request.stopped = time.time()
    attempt.save(request)
    status = attempt.load(Status)
    state = status.state if status else None
    if not record.run_id or (state in TERMINAL and state != "cancelled"):
        return  # no run yet, or it ended otherwise before the cancel took effect
    for delay in (0.0, 1.0, 2.0, 4.0):
        time.sleep(delay)
        try:
            if tracking.client(tracking_uri).get_run(record.run_id).info.status == "KILLED":
                return
            tracking.finish_run(tracking_uri, record.run_id, "cancelled", "cancelled")
            return
        except Exception:
            continue
    # The store stays unusable: `runner sync` ends the run from the spool, as for a job.
    final = {"run_id": record.run_id, "state": "cancelled", "reason": "cancelled"}
    write_json_atomic(record.dir / "spool" / SPOOL_FINAL, {**final, "time": time.time()})
