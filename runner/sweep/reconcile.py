"""Reconciling the ledger with the executor's own view: a job that ended without writing an
outcome (killed before the cell started, a node failure, a time-out past its requeues, an
admin's scancel) gets its end written into the ledger, so that it reads ``failed`` (or
``cancelled``) with the executor's reason, and ``resume`` takes it.

Asked in one go for the whole matrix (SLURM: one sacct call, whatever the number of cells),
by ``status``, ``sweep`` and ``resume`` before they read the states. They also upload then
what ended cells kept in their spool (metrics their tracking store refused), so that the
MLflow UI catches up without a ``runner sync``.
"""

from __future__ import annotations

import time

from runner.executors.backends import BACKENDS, backend_class, make_backend
from runner.executors.base import Backend
from runner.ledger import LOST_AFTER_S, TERMINAL, CellState, Job, Monitor, Status
from runner.plan import Plan
from runner.sweep.sync import upload_ended

#: States whose job may have ended without a word.
OPEN = ("submitted", "running")


def reconcile(plan: Plan, states: dict[str, CellState] | None = None) -> str | None:
    """Write the end of every open attempt whose job the executor says is over, then upload
    the spools of ended cells; return the warnings (the executor could not be asked in full,
    the tracking store can't take the spools now)."""
    states = plan.states() if states is None else states
    warning, written = _executor_ends(plan, states)
    upload = upload_ended(plan, plan.states() if written else states)
    return "; ".join(w for w in (warning, upload) if w) or None


def _executor_ends(plan: Plan, states: dict[str, CellState]) -> tuple[str | None, bool]:
    executor = plan.matrix.spec.executor
    if backend_class(executor.kind).ended is Backend.ended:
        return None, False  # a queue that lives in the runner: the sweep records the ends
    open_jobs = {str(s.job_id): cid for cid, s in states.items() if s.state in OPEN and s.job_id}
    if not open_jobs:
        return None, False
    backend = make_backend(executor, plan.ledger.logs_dir)
    ends, warning = backend.ended(list(open_jobs))
    now = time.time()
    written = False
    for job_id, end in ends.items():
        record = plan.ledger.cell(open_jobs[job_id])
        attempt = record.attempts()[-1]
        status = attempt.load(Status)
        if (status and status.state in TERMINAL) or attempt.load(Monitor):
            continue  # the job wrote its outcome after all, or the end is known already
        last_sign = states[open_jobs[job_id]].updated or 0.0
        if not end.certain and now - last_sign < LOST_AFTER_S:
            continue
        attempt.save(
            Monitor(state=end.state, reason=end.reason, log=end.log, tail=end.tail, time=now)
        )
        written = True
    return warning, written


def accounting(plan: Plan) -> tuple[dict[str, tuple[float, int]], str | None]:
    """What the executors' accounting says the matrix's jobs used (SLURM: one ``sacct`` call
    for every attempt that ran there), for the report's GPU-hours; and a warning when it
    could not be asked. Attempts are grouped by the executor that ran them (``--executor``
    may have sent some elsewhere)."""
    by_kind: dict[str, list[str]] = {}
    for cell in plan.cells:
        for a in plan.ledger.cell(cell.id).attempts():
            job = a.load(Job)
            if job and job.executor in BACKENDS and job.job_id:
                by_kind.setdefault(job.executor, []).append(str(job.job_id))
    usage: dict[str, tuple[float, int]] = {}
    warnings = []
    for kind, ids in by_kind.items():
        found, problem = BACKENDS[kind].usage(ids)
        usage.update(found)
        if problem:
            warnings.append(
                f"GPU-hours of {kind} cells come from the ledger, not accounting ({problem}): "
                "requeued runs before the last are not counted"
            )
    return usage, "; ".join(warnings) or None
