"""From a validated plan to submitted jobs: decide which cells go out, claim them in the
ledger so that no cell is submitted twice, and keep ``slots`` of them in flight.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import track
from runner.cells import Cell
from runner.errors import RunnerError
from runner.expand import Expansion
from runner.job import CellJob
from runner.ledger import TERMINAL, CellState, Ledger
from runner.matrix import LoadedMatrix
from runner.recipe import Recipe
from runner.validate import plan as validate_plan

POLL_S = 1.0


@dataclass
class Plan:
    """A validated matrix with its cells and where their states live."""

    matrix: LoadedMatrix
    recipe: Recipe
    expansion: Expansion
    ledger: Ledger
    workdir: Path

    @property
    def cells(self) -> list[Cell]:
        return self.expansion.cells

    def states(self) -> dict[str, CellState]:
        try:
            return self.ledger.states([c.id for c in self.cells])
        except OSError as exc:
            problem = self.matrix.problem(
                ("sweep_dir",),
                f"cannot read cell states under {self.ledger.root}: {exc.strerror or exc}",
            )
            raise RunnerError(problem.render(self.matrix.file)) from None

    @property
    def tracking_uri(self) -> str:
        return track.resolve_uri(self.matrix.spec.tracking.uri, self.workdir)


def make_plan(matrix_file: Path | str, workdir: Path | None = None) -> Plan:
    from runner.matrix import load_matrix

    workdir = (workdir or Path.cwd()).absolute()
    m = load_matrix(matrix_file)
    recipe, expansion = validate_plan(m)
    sweep_dir = Path(m.spec.sweep_dir)
    ledger = Ledger(sweep_dir if sweep_dir.is_absolute() else workdir / sweep_dir, m.spec.name)
    return Plan(m, recipe, expansion, ledger, workdir)


@dataclass
class SweepOutcome:
    submitted: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    lost_race: list[str] = field(default_factory=list)
    job_ids: dict[str, str] = field(default_factory=dict)
    experiment_id: str | None = None
    followed: bool = True  # False when the sweep returned once the cells were submitted
    # Set when a background scheduler took the queue: its pid and log file.
    scheduler: dict[str, Any] | None = None


Observer = Callable[[dict[str, CellState]], None]


def submit(
    plan: Plan,
    wait: bool | None = None,
    observe: Observer | None = None,
    choose: Callable[[list[Cell], dict[str, CellState]], list[Cell]] | None = None,
) -> SweepOutcome:
    """Submit the chosen cells (default: those never submitted) once each; follow them to
    the end when the backend waits. ``choose`` picks cells from the current states.

    A backend whose queue lives in the runner (local processes, Docker GPUs) can't be left
    alone with more cells than slots, so when not following, the queue is handed to a
    background scheduler process (:mod:`runner.background`) and this returns at once."""
    from runner.executors import make_backend

    spec = plan.matrix.spec
    outcome = SweepOutcome()
    states = plan.states()
    if choose is None:
        pending = [c for c in plan.cells if states[c.id].state == "pending"]
    else:
        pending = choose(plan.cells, states)
    chosen = {c.id for c in pending}
    outcome.skipped.update(s.state for cid, s in states.items() if cid not in chosen)
    if not pending:
        return outcome
    # Everything that can refuse comes before anything is written (logs, claims, runs).
    uri = plan.tracking_uri
    track.check_reachable(uri)
    backend = make_backend(spec.executor, plan.ledger.logs_dir)
    follow = backend.waits if wait is None else wait
    detach = not follow and backend.slots is not None
    if detach and not backend.detachable:
        raise RunnerError(
            f"executor '{spec.executor.kind}' runs the cells inside `runner sweep` itself: "
            "drop --no-wait"
        )
    artifact_root = plan.workdir / "mlartifacts"
    experiment_id = track.ensure_experiment(uri, spec.name, artifact_root)
    outcome.experiment_id = experiment_id
    outcome.followed = follow
    if detach:
        from runner.background import hand_off

        hand_off(plan, {c.id: states[c.id].attempts for c in pending}, outcome)
        return outcome
    jobs = claim_jobs(plan, pending, states, experiment_id, outcome)
    run_queue(plan, backend, jobs, outcome, follow, observe)
    return outcome


def claim_jobs(
    plan: Plan,
    cells: list[Cell],
    states: dict[str, CellState],
    experiment_id: str,
    outcome: SweepOutcome,
) -> list[CellJob]:
    """Claim each cell's next attempt in the ledger (losers of a race go to
    ``outcome.lost_race``) and build the job payloads of those won."""
    spec = plan.matrix.spec
    # The code that trains is the recipe's: record the commit of the tree that holds it.
    commit = track.git_commit(plan.recipe.config_dir)
    claimed: list[tuple[Cell, int]] = []
    for cell in cells:
        record = plan.ledger.cell(cell.id)
        record.write_cell(cell, spec.recipe, spec.base)
        attempt = record.claim(spec.executor.kind, states[cell.id].attempts)
        if attempt is None:  # another sweep of this matrix got there first
            outcome.lost_race.append(cell.id)
        else:
            claimed.append((cell, attempt.number))
    return [
        CellJob(
            matrix=spec.name,
            recipe=spec.recipe,
            cell_id=c.id,
            run_name=c.run_name,
            values=c.values,
            overrides=[*spec.base, *c.overrides],
            cells_dir=str(plan.ledger.cells_dir),
            attempt=n,
            tracking_uri=plan.tracking_uri,
            experiment_id=experiment_id,
            executor=spec.executor.kind,
            workdir=str(plan.workdir),
            commit=commit,
        )
        for c, n in claimed
    ]


def _record_submission(plan: Plan, job: CellJob, sj: Any, outcome: SweepOutcome) -> None:
    attempt = plan.ledger.cell(job.cell_id).attempt(job.attempt)
    attempt.write("job", {"job_id": str(sj.job_id), "executor": job.executor, "time": time.time()})
    outcome.submitted.append(job.cell_id)
    outcome.job_ids[job.cell_id] = str(sj.job_id)


def run_queue(
    plan: Plan,
    backend: Any,
    jobs: list[CellJob],
    outcome: SweepOutcome,
    follow: bool,
    observe: Observer | None,
) -> None:
    queue = list(jobs)
    active: list[tuple[CellJob, Any]] = []
    ids = [c.id for c in plan.cells]
    while queue or (follow and active):
        room = len(queue) if backend.slots is None else backend.slots - len(active)
        # A cell cancelled while it waited in the queue is not started.
        queue = [
            j for j in queue if not plan.ledger.cell(j.cell_id).attempt(j.attempt).read("cancel")
        ]
        if room > 0 and queue:
            batch, queue = queue[:room], queue[room:]
            for job, sj in zip(batch, backend.submit(batch), strict=True):
                _record_submission(plan, job, sj, outcome)
                active.append((job, sj))
        if not follow:
            continue
        still = []
        for job, sj in active:
            if backend.finished(sj):
                _check_outcome(plan, backend, job, sj)
                backend.release(sj)
            else:
                still.append((job, sj))
        active = still
        if observe:
            observe(plan.ledger.states(ids))
        if queue or active:
            time.sleep(POLL_S)
    if observe:
        observe(plan.ledger.states(ids))


def _check_outcome(plan: Plan, backend: Any, job: CellJob, sj: Any) -> None:
    """A job that ended without a terminal status (killed, crashed) is recorded as lost."""
    attempt = plan.ledger.cell(job.cell_id).attempt(job.attempt)
    status = attempt.read("status") or {}
    if status.get("state") not in TERMINAL:
        attempt.write("monitor", {"reason": backend.end_reason(sj), "time": time.time()})
