"""A search during a sweep: new trials as slots free up, restarts once a study has ended.

- TPE slots past ``startup`` are asked when a slot of the executor is free (local, docker:
  the queue calls :func:`make_refill`), so every ask sees the results in so far; on SLURM each
  ``runner sweep`` submits the next ``search.batch`` trials as one array (:func:`initial`).
- A slot is taken by writing its file once (``os.link``): two sweeps never ask the same slot;
  a sweep that loses takes the next free one with the trial it asked, or discards it.
- Restarts are chosen once every slot of a study has ended, and written once.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from runner.matrix.cells import Cell
from runner.matrix.schema import MODEL_BASED
from runner.search import study as journal
from runner.search.trials import Study
from runner.sweep.queue import Refill, SweepOutcome, claim_jobs

if TYPE_CHECKING:
    from runner.job.cell import CellJob
    from runner.plan import Plan


def _seed(seed: int, key: str, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{key}:{index}:tpe".encode()).hexdigest()[:8], 16)


def _free(study: Study) -> int | None:
    return next((i for i, c in enumerate(study.slots) if c is None), None)


def _register(plan: Plan, study: Study, index: int, cell: Cell) -> Cell:
    names = {c.run_name for c in plan.cells if c.id != cell.id}
    if cell.run_name in names:
        unique = f"{cell.run_name}_{cell.id[:6]}"
        cell = Cell(cell.id, cell.values, cell.overrides, unique, cell.origin, cell.tags)
    study.slots[index] = cell
    assert plan.search is not None
    plan.search.members[cell.id] = (study, index)
    plan.add_cells([cell])
    return cell


def ask_new(plan: Plan, n: int) -> list[Cell]:
    """Ask up to ``n`` new TPE / GP trials, one study after another; their cells are added to the
    plan (pending)."""
    search = plan.search
    assert search is not None and search.space is not None and plan.matrix.spec.search
    out: list[Cell] = []
    seed = plan.matrix.spec.search.seed
    while len(out) < n:
        open_studies = [st for st in search.studies if _free(st) is not None]
        if not open_studies:
            break
        for st in open_studies:
            if len(out) >= n:
                break
            index = _free(st)
            assert index is not None
            s, trial, trial_id = journal.ask(
                search.journal,
                st.name,
                search.mode,
                search.space,
                _seed(seed, st.key, index),
                plan.matrix.spec.search.method,
            )
            values = search.space.decode(trial.params)
            while index is not None:
                cell = search.trial_cell(st, index, values)
                data = {"index": index, "values": values, "cell_id": cell.id}
                data.update(trial_id=trial_id, number=trial.number, time=time.time())
                if journal.write_once(journal.slot_file(st.dir, index), data):
                    record = {"study": st.name, "trial_id": trial_id, "number": trial.number}
                    journal.write_once(journal.trial_file(search.cells_dir / cell.id), record)
                    trial.set_user_attr("cell_id", cell.id)
                    trial.set_user_attr("slot", index)
                    out.append(_register(plan, st, index, cell))
                    break
                # Another sweep asked this slot first: take its cell, try the next slot.
                theirs = journal.read_slots(st.dir).get(index, {})
                if theirs.get("values") is not None:
                    _register(plan, st, index, search.trial_cell(st, index, theirs["values"]))
                index = _free(st)
            if index is None:
                journal.discard(s, trial)
    return out


def freeze_restarts(plan: Plan) -> list[Cell]:
    """Choose the restarts of every study that has ended and has none yet; return the
    restart cells this added to the plan."""
    search = plan.search
    restarts = plan.matrix.spec.restarts
    if search is None or restarts is None:
        return []
    states = plan.states()
    new: list[Cell] = []
    for st in search.studies:
        if st.key in search.restarts_frozen or not search.ended(st, states):
            continue
        ranked = search.ranked(st, states)[: restarts.top]
        journal.write_once(
            st.dir / "restarts.json", {"trials": [c.id for c in ranked], "time": time.time()}
        )
        chosen = search.chosen(st, states) or []  # the file as written, whoever won
        known = {c.id for c in plan.cells}
        cells = [c for c in search.restart_cells(st, chosen) if c.id not in known]
        search.restarts += cells
        plan.add_cells(cells)
        new += cells
    return new


def initial(plan: Plan, pending: list[Cell], slots: int | None) -> list[Cell]:
    """The cells a sweep of a search starts with: the pending ones and restarts now due,
    then new TPE / GP trials for the free slots; without slots (SLURM), one chunk of at most
    ``search.batch`` trials (default: the startup trials of TPE and GP, else all)."""
    search = plan.search
    spec = plan.matrix.spec.search
    if search is None or spec is None:
        return pending
    pending = [*pending, *freeze_restarts(plan)]
    trials = [c for c in pending if search.study_of(c.id) is not None]
    others = [c for c in pending if search.study_of(c.id) is None]
    if slots is None:
        model_based = spec.method in MODEL_BASED
        batch = spec.batch or (search.startup if model_based else len(trials) or 1)
        trials = trials[:batch]
        room = batch - len(trials)
    else:
        room = slots - len(pending)
    if room > 0 and search.unasked():
        trials += ask_new(plan, room)
    return [*trials, *others]


def make_refill(
    plan: Plan, experiment_id: str, outcome: SweepOutcome, job_class: type[CellJob]
) -> Refill:
    """The queue's refill for a sweep of a search: ask trials, else choose restarts, as
    ``job_class`` payloads (the backend's)."""

    def refill(room: int) -> list[CellJob]:
        cells = ask_new(plan, room) if plan.search and plan.search.unasked() else []
        if not cells:
            cells = freeze_restarts(plan)
        if not cells:
            return []
        return claim_jobs(plan, cells, {c.id: 0 for c in cells}, experiment_id, outcome, job_class)

    return refill
