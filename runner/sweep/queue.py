"""The runner-side queue: claim cells in the ledger, submit them, keep ``slots`` in flight.

Used by a sweep that follows its cells and by the background scheduler alike, so a cell is
claimed, submitted and watched the same way whoever holds the queue.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner import tracking
from runner.executors.base import Backend, SweepMode
from runner.job.cell import CellJob
from runner.ledger import TERMINAL, Cancel, CellState, Job, Monitor, Status
from runner.matrix.cells import Cell
from runner.plan import Plan
from runner.sweep import remedies
from runner.sweep.standby import Standby

POLL_S = 1.0

Observer = Callable[[dict[str, CellState]], None]
#: Called when slots are free and the queue is empty, with the number of free slots: new
#: claimed jobs (a search asks trials as results come in), or none.
Refill = Callable[[int], list[CellJob]]


@dataclass
class SweepOutcome:
    submitted: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    lost_race: list[str] = field(default_factory=list)
    job_ids: dict[str, str] = field(default_factory=dict)
    experiment_id: str | None = None
    mode: SweepMode = "follow"  # how the sweep ran them (runner.executors.base.SweepMode)
    # Set when a background scheduler took the queue: its pid and log file.
    scheduler: dict[str, Any] | None = None


def claim_jobs(
    plan: Plan,
    cells: list[Cell],
    attempts_seen: dict[str, int],
    experiment_id: str,
    outcome: SweepOutcome,
    job_class: type[CellJob] = CellJob,
) -> list[CellJob]:
    """Claim each cell's next attempt in the ledger and build the job payloads of those won,
    as ``job_class`` (the backend's :attr:`~runner.executors.base.Backend.job_class`).

    ``attempts_seen``: cell id -> the attempts the caller saw when it chose the cell. The
    claim numbers from it, so that two racing sweeps agree on one winner; losers go to
    ``outcome.lost_race``.
    """
    spec = plan.matrix.spec
    # The code that trains is the recipe's: record the commit of the tree that holds it.
    commit = tracking.git_commit(plan.recipe.config_dir)
    claimed: list[tuple[Cell, int, list[str]]] = []
    for cell in cells:
        record = plan.ledger.cell(cell.id)
        record.write_cell(cell, spec.recipe, spec.base)
        # Out-of-memory remedies in force, or one to add now (runner.sweep.remedies).
        remedy = remedies.decide(plan, cell, record) if attempts_seen[cell.id] else None
        attempt = record.claim(spec.executor.kind, attempts_seen[cell.id])
        if attempt is None:  # another sweep of this matrix got there first
            outcome.lost_race.append(cell.id)
        else:
            if remedy is not None:
                remedies.apply(plan, cell, remedy, attempt)
            claimed.append((cell, attempt.number, remedy.overrides if remedy else []))
    return [
        job_class(
            matrix=spec.name,
            recipe=spec.recipe,
            cell_id=c.id,
            run_name=c.run_name,
            values=c.values,
            overrides=[*spec.base, *c.overrides, *extra],
            cells_dir=str(plan.ledger.cells_dir),
            attempt=n,
            tracking_uri=plan.tracking_uri,
            experiment_id=experiment_id,
            executor=spec.executor.kind,
            workdir=str(plan.workdir),
            commit=commit,
            # A trial's Optuna trial is created here, on its first claim.
            search=plan.search.spec_for(c) if plan.search else None,
        )
        for c, n, extra in claimed
    ]


def run_queue(
    plan: Plan,
    backend: Backend,
    jobs: list[CellJob],
    outcome: SweepOutcome,
    follow: bool,
    observe: Observer | None,
    refill: Refill | None = None,
) -> None:
    """Submit ``jobs`` as slots free up; with ``follow``, watch them to their end.
    ``refill`` (a following queue with slots) adds jobs whenever slots are free and the
    queue is empty; a cancelled cell stops it (``runner cancel`` ends a search too). A
    following queue without ``refill`` keeps the next cell warm beside the running ones
    (:mod:`runner.sweep.standby`): a freed slot goes to it first, and one still waiting when
    the queue stops is ended and given back (its cell pending again)."""
    queue = list(jobs)
    active: list[tuple[CellJob, Any]] = []
    # The next cell in line, started and waiting for a slot (runner.sweep.standby).
    warm = Standby(plan, backend) if follow and refill is None else None
    try:
        _run(plan, backend, queue, active, outcome, follow, observe, refill, warm)
    except KeyboardInterrupt:
        # Ctrl-C: what was submitted runs on; what waited for a slot is given back (the
        # standby's process ended first).
        standby = warm.drop() if warm is not None else None
        dropped = [
            j.cell_id for j in queue if plan.ledger.cell(j.cell_id).release(_attempt(plan, j))
        ]
        dropped = [standby, *dropped] if standby else dropped
        raise SweepInterrupted([j.cell_id for j, _ in active], dropped) from None
    finally:
        if warm is not None:
            warm.drop()
    if observe:
        observe(plan.ledger.states([c.id for c in plan.cells]))


def _run(
    plan: Plan,
    backend: Backend,
    queue: list[CellJob],
    active: list[tuple[CellJob, Any]],
    outcome: SweepOutcome,
    follow: bool,
    observe: Observer | None,
    refill: Refill | None,
    warm: Standby | None,
) -> None:
    """run_queue's loop; ``queue`` and ``active`` are updated in place (an interrupt reads
    them)."""
    while True:
        room = len(queue) if backend.slots is None else backend.slots - len(active)
        # A cell cancelled while it waited in the queue is not started.
        kept = [j for j in queue if not _cancelled(plan, j)]
        if len(kept) < len(queue):
            refill = None
        queue[:] = kept
        if refill is not None and follow and backend.slots is not None and room > len(queue):
            queue += refill(room - len(queue))
        if room > 0 and warm is not None and (woken := warm.wake()):
            active.append(woken)  # the standby takes the first free slot
            room -= 1
        if room > 0 and queue:
            batch = queue[:room]
            for job, sj in zip(batch, backend.submit(batch), strict=True):
                _record_submission(plan, job, sj, outcome)
                active.append((job, sj))
            del queue[: len(batch)]
        if warm is not None:
            warm.keep_one(queue, lambda job, sj: _record_submission(plan, job, sj, outcome))
        if not follow:
            if not queue:
                break
            continue
        still = []
        for job, sj in [*active, *(warm.ended() if warm is not None else [])]:
            if backend.finished(sj):
                _check_outcome(plan, backend, job, sj)
                backend.release(sj)
                queue += _remedied(plan, job, outcome)  # on_oom.auto: again, remedied
                if _status(plan, job).state == "cancelled":
                    refill = None
            else:
                still.append((job, sj))
        freed = len(still) < len(active)
        active[:] = still
        if observe:
            observe(plan.ledger.states([c.id for c in plan.cells]))
        waiting = warm is not None and warm.waiting is not None
        if not queue and not active and not waiting and refill is None:
            break
        if not queue and not active and not waiting:
            # Everything ended: one more look for work (the last trial's result may let a
            # search choose its restarts); none means the sweep is over.
            queue += refill(backend.slots or 1) if refill is not None else []
            if not queue:
                break
            continue
        if freed and (queue or refill is not None):
            continue  # a slot just freed and work waits for it: hand it on now, not after a wait
        if not waiting or active:
            backend.wait([sj for _, sj in active], POLL_S)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep: ``running``: the cells submitted, which run on; ``dropped``:
    those that waited for a slot, given back (pending again)."""

    def __init__(self, running: list[str], dropped: list[str]) -> None:
        super().__init__("sweep interrupted")
        self.running, self.dropped = running, dropped


def _attempt(plan: Plan, job: CellJob) -> Any:
    return plan.ledger.cell(job.cell_id).attempt(job.attempt)


def _cancelled(plan: Plan, job: CellJob) -> bool:
    return plan.ledger.cell(job.cell_id).attempt(job.attempt).load(Cancel) is not None


def _status(plan: Plan, job: CellJob) -> Status:
    return plan.ledger.cell(job.cell_id).attempt(job.attempt).load(Status) or Status(state="")


def _record_submission(plan: Plan, job: CellJob, sj: Any, outcome: SweepOutcome) -> None:
    attempt = plan.ledger.cell(job.cell_id).attempt(job.attempt)
    attempt.save(Job(job_id=str(sj.job_id), executor=job.executor, time=time.time()))
    if job.cell_id not in outcome.submitted:  # on_oom.auto submits a cell again
        outcome.submitted.append(job.cell_id)
    outcome.job_ids[job.cell_id] = str(sj.job_id)


def _remedied(plan: Plan, job: CellJob, outcome: SweepOutcome) -> list[CellJob]:
    """With ``on_oom.auto``: a cell that just ran out of memory, claimed again with its next
    remedy (none when it has none left)."""
    cell = remedies.auto_retry(plan, job.cell_id)
    if cell is None:
        return []
    seen = {cell.id: len(plan.ledger.cell(cell.id).attempts())}
    return claim_jobs(plan, [cell], seen, job.experiment_id, outcome, type(job))


def _check_outcome(plan: Plan, backend: Backend, job: CellJob, sj: Any) -> None:
    """A job that ended without a terminal status (killed, crashed) is recorded as lost."""
    attempt = plan.ledger.cell(job.cell_id).attempt(job.attempt)
    if _status(plan, job).state not in TERMINAL:
        attempt.save(Monitor(reason=backend.end_reason(sj), time=time.time()))
