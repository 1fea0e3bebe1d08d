"""``sweep`` and ``resume``: choose cells, check what can refuse, then hand them to the queue
(followed here, or by a background scheduler when the sweep does not wait)."""

from __future__ import annotations

from collections.abc import Callable

from runner import tracking
from runner.errors import RunnerError
from runner.executors.backends import make_backend
from runner.executors.base import Backend, SweepMode
from runner.ledger import CellState, registry
from runner.matrix.cells import Cell
from runner.plan import Plan
from runner.sweep import refill as search_refill
from runner.sweep.background import hand_off
from runner.sweep.preflight import other_ledgers
from runner.sweep.queue import Observer, SweepOutcome, claim_jobs, run_queue

Chooser = Callable[[list[Cell], dict[str, CellState]], list[Cell]]


def submit(
    plan: Plan,
    wait: bool | None = None,
    observe: Observer | None = None,
    choose: Chooser | None = None,
    check_other_ledgers: bool = False,
) -> SweepOutcome:
    """Submit the chosen cells (default: those never submitted) once each; follow them to
    the end in ``follow`` mode (the backend's default, or as ``wait`` asks: ``--wait`` /
    ``--no-wait``). ``choose`` picks cells from the current states. ``check_other_ledgers``:
    refuse to train cells done in another ledger of the matrix (a sweep's default).

    A backend whose queue lives in the runner (local processes, Docker GPUs) can't be left
    alone with more cells than slots, so when not following, the queue is handed to a
    background scheduler process (:mod:`runner.sweep.background`) and this returns at once."""
    spec = plan.matrix.spec
    outcome = SweepOutcome()
    states = plan.states()
    if choose is None:
        pending = [c for c in plan.cells if states[c.id].state == "pending"]
    else:
        pending = choose(plan.cells, states)
    chosen = {c.id for c in pending}
    outcome.skipped.update(s.state for cid, s in states.items() if cid not in chosen)
    # A sweep of a search also asks new trials and chooses restarts (never resume).
    searching = plan.search is not None and plan.matrix.spec.search is not None
    searching = searching and choose is None
    if not pending and not (searching and _search_has_work(plan, states)):
        return outcome
    # Everything that can refuse comes before anything is written (logs, claims, runs).
    if check_other_ledgers:
        other_ledgers(plan)
    uri = plan.tracking_uri
    tracking.check_reachable(uri)
    backend = make_backend(spec.executor, plan.ledger.logs_dir)
    backend.preflight()  # a cluster that can't take jobs: say so, claim nothing
    mode = outcome.mode = sweep_mode(backend, wait)
    artifact_root = plan.workdir / "mlartifacts"
    experiment_id = tracking.ensure_experiment(uri, spec.name, artifact_root)
    outcome.experiment_id = experiment_id
    if searching:
        pending = search_refill.initial(plan, pending, backend.slots)
        if not pending:
            return outcome
    attempts_seen = {c.id: states[c.id].attempts if c.id in states else 0 for c in pending}
    registry.remember(plan.ledger, spec.name)
    if mode == "background":
        hand_off(plan, attempts_seen, outcome, refill=searching)
        return outcome
    jobs = claim_jobs(plan, pending, attempts_seen, experiment_id, outcome, backend.job_class)
    refill = None
    if searching and mode == "follow" and backend.slots is not None:
        refill = search_refill.make_refill(plan, experiment_id, outcome, backend.job_class)
    run_queue(plan, backend, jobs, outcome, mode == "follow", observe, refill)
    return outcome


def sweep_mode(backend: Backend, wait: bool | None) -> SweepMode:
    """The backend's default mode, or as ``--wait`` / ``--no-wait`` asks."""
    if wait is None:
        return backend.modes[0]
    if wait:
        return "follow"
    for mode in backend.modes:
        if mode != "follow":
            return mode
    raise RunnerError(
        f"executor '{backend.kind}' runs the cells inside `runner sweep` itself: drop --no-wait"
    )


def _search_has_work(plan: Plan, states: dict[str, CellState]) -> bool:
    """Trials still to ask, or a study that ended without its restarts chosen yet."""
    search = plan.search
    if search is None:
        return False
    if search.unasked():
        return True
    return plan.matrix.spec.restarts is not None and any(
        st.key not in search.restarts_frozen and search.ended(st, states) for st in search.studies
    )
