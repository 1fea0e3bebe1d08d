"""Trials are cells: a search's slots, and the restarts after it, as ordinary cells.

Each point of the grid (the product of ``axes``; the base config when there are none) gets
its own study of ``search.trials`` slots. Slot ``i`` is a cell whose values are the point's
plus the sampled ones, so it has an id, a run name, a ledger entry and an MLflow run like
any cell. A slot's values are a pure function of (seed, study, i) for ``random``, for
``grid`` (the shuffled grid of choices) and for the first ``startup`` slots of TPE and GP;
their later slots exist once asked (:mod:`runner.sweep.refill`), and are read back from their slot
files. Planning never writes: it reads the slot files and the ledger.

Restarts: once every slot of a study has ended, the ``top`` best trials by the search metric
are run again with ``seeds`` seeds (times ``restarts.axes``); the choice is written once
(``restarts.json``), so later results never move it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.ledger import TERMINAL, CellRecord, CellState, read_json
from runner.matrix.asha import Asha
from runner.matrix.cells import Cell, cell_id, override, run_name_tokens
from runner.matrix.schema import MODEL_BASED, LoadedMatrix
from runner.matrix.search_checks import asha_of, objective, restart_points
from runner.matrix.space import Space, encode, rounded
from runner.search import study as journal
from runner.search.prune import SearchSpec


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Study:
    """One Optuna study: a point of the grid and its slots."""

    key: str
    name: str
    point: Cell | None  # None: the study of a pruned plain grid (every cell is a member)
    dir: Path
    slots: list[Cell | None] = field(default_factory=list)  # None: not asked yet


@dataclass
class SearchPlan:
    m: LoadedMatrix
    root: Path  # <sweep_dir>/<matrix>/search
    cells_dir: Path
    groups: set[str]
    metric: str
    mode: str
    space: Space | None
    asha: Asha | None
    studies: list[Study] = field(default_factory=list)
    #: cell id -> (its study, its slot index; None for a member of the grid study)
    members: dict[str, tuple[Study, int | None]] = field(default_factory=dict)
    restarts: list[Cell] = field(default_factory=list)
    restarts_frozen: set[str] = field(default_factory=set)  # study keys with restarts.json

    @property
    def journal(self) -> Path:
        return self.root / journal.JOURNAL

    @property
    def trials(self) -> int:
        s = self.m.spec.search
        if s is None or self.space is None:
            return 0
        return s.trials or self.space.grid_size()

    def unasked(self) -> int:
        return sum(1 for st in self.studies for c in st.slots if c is None)

    def study_of(self, cid: str) -> Study | None:
        return self.members.get(cid, (None, None))[0]

    def describe(self) -> str:
        """One line for ``runner status``: how far the search is, what the pruner does."""
        parts = []
        spec = self.m.spec
        if spec.search is not None:
            total = self.trials * len(self.studies)
            made = total - self.unasked()
            parts.append(f"search: {spec.search.method}, {made} of {total} trials made")
            if made < total:
                parts[-1] += " (the rest as results come in)"
        if self.asha is not None:
            a = self.asha
            parts.append(
                f"pruner: asha, rungs at epochs {a.rungs()} of {a.max_epochs}, eta {a.eta}"
            )
        if spec.restarts is not None:
            chosen = f"{len(self.restarts)} restart cells" if self.restarts else "none yet"
            parts.append(f"restarts: {chosen} (chosen once every trial has ended)")
        return "; ".join(parts)

    # --- building cells --------------------------------------------------------------------

    def trial_cell(self, study: Study, index: int, values: dict[str, Any]) -> Cell:
        point = study.point
        assert point is not None and self.space is not None
        own = {k: values[k] for k in self.space.names()}
        overrides = (*point.overrides, *(override(k, v) for k, v in own.items()))
        cid = cell_id(self.m.spec.recipe, [*self.m.spec.base, *overrides])
        shown = {k: rounded(v) for k, v in own.items()}
        labels = self.m.labels
        # A `run_name:` template names the grid point; the trial's own values follow it.
        head = (
            [point.run_name]
            if self.m.spec.run_name
            else run_name_tokens(point.values, self.groups, labels)
        )
        tokens = [*head, f"t{index}", *run_name_tokens(shown, self.groups, labels)]
        name = "_".join(t for t in tokens if t)
        tags = {"search.study": study.key, "search.slot": str(index)}
        return Cell(cid, {**point.values, **own}, overrides, name, f"trial[{index}]", tags)

    def deterministic(self, study: Study, index: int) -> dict[str, Any] | None:
        """The values of slot ``index`` when they don't depend on results, else None."""
        s = self.m.spec.search
        assert s is not None and self.space is not None
        if s.method == "grid":
            return self.space.grid(int(_digest(s.seed, study.key)[:12], 16))[index]
        if s.method == "random" or index < self.startup:
            return self.space.sample(f"{s.seed}:{study.key}:{index}")
        return None

    @property
    def startup(self) -> int:
        s = self.m.spec.search
        if s is None or s.method not in MODEL_BASED:
            return self.trials
        return min(self.trials, s.startup or 10)

    def spec_for(self, cell: Cell) -> SearchSpec:
        """What the cell's job needs: the metric always; its Optuna trial (created here on
        the cell's first claim) when it is a trial; ASHA's settings when it is pruned."""
        base = SearchSpec(self.metric, self.mode)
        study, index = self.members.get(cell.id, (None, None))
        if study is None:
            return base  # a restart: runs to the end, no trial
        cell_dir = CellRecord(self.cells_dir, cell.id).dir
        if index is not None and self.space is not None:
            params = self.space.encode(cell.values)
            dists: dict[str, Any] = self.space.to_optuna()
        else:
            params, dists = _grid_params(self.m, cell)
        attrs = {"cell_id": cell.id, "run_name": cell.run_name, "slot": index}
        record = journal.ensure_trial(
            self.journal, study.name, self.mode, cell_dir, params, dists, attrs
        )
        asha = self.asha
        return SearchSpec(
            self.metric,
            self.mode,
            journal=str(self.journal),
            study=study.name,
            trial_id=int(record["trial_id"]),
            trial_number=int(record["number"]),
            asha=None if asha is None else (asha.min_epochs, asha.max_epochs, asha.eta),
            bracket=0 if asha is None else asha.bracket_of(cell.id),
            rungs=None if asha is None else asha.placed,
        )

    # --- restarts ---------------------------------------------------------------------------

    def ended(self, study: Study, states: dict[str, CellState]) -> bool:
        """Every slot asked and ended (done, pruned, failed...): restarts may be chosen."""
        return all(c is not None and states[c.id].state in TERMINAL for c in study.slots)

    def ranked(self, study: Study, states: dict[str, CellState]) -> list[Cell]:
        """The study's done trials, best first by the search metric (ties: earlier slot)."""
        done = [c for c in study.slots if c is not None and states[c.id].state == "done"]
        scored = [(value_of(states[c.id], self.metric), i, c) for i, c in enumerate(done)]
        scored = [x for x in scored if x[0] is not None]
        sign = -1.0 if self.mode == "max" else 1.0
        return [c for _, _, c in sorted(scored, key=lambda x: (sign * x[0], x[1]))]

    def restart_cells(self, study: Study, chosen: list[Cell]) -> list[Cell]:
        out = []
        labels = self.m.labels
        for rank, trial in enumerate(chosen):
            for extra in restart_points(self.m):
                # A value the restart sets (cv: the outer fold) replaces the trial's own, in
                # its overrides and its name.
                kept = [o for o in trial.overrides if o.partition("=")[0] not in extra]
                overrides = (*kept, *(override(k, v) for k, v in extra.items()))
                cid = cell_id(self.m.spec.recipe, [*self.m.spec.base, *overrides])
                replaced = {k: trial.values[k] for k in extra if k in trial.values}
                dropped = set(run_name_tokens(replaced, self.groups, labels))
                head = [t for t in trial.run_name.split("_") if t not in dropped]
                name = "_".join([*head, *run_name_tokens(extra, self.groups, labels)])
                tags = {
                    "search.study": study.key,
                    "restart.of": trial.id,
                    "restart.rank": str(rank),
                }
                out.append(Cell(cid, {**trial.values, **extra}, overrides, name, "restart", tags))
        return out

    def chosen(self, study: Study, states: dict[str, CellState]) -> list[Cell] | None:
        """The trials restarted: as frozen, or (planning) as they would be frozen now."""
        r = self.m.spec.restarts
        if r is None:
            return None
        frozen = read_json(study.dir / "restarts.json")
        by_id = {c.id: c for c in study.slots if c is not None}
        if frozen is not None:
            self.restarts_frozen.add(study.key)
            return [by_id[i] for i in frozen.get("trials", []) if i in by_id]
        if not self.ended(study, states):
            return None
        return self.ranked(study, states)[: r.top]


def value_of(state: CellState, metric: str) -> float | None:
    """A cell's best value of the search metric, from its ledger status."""
    if state.objective is not None:
        return state.objective
    return state.best_val_dice if metric == "val_dice" else None


def _grid_params(m: LoadedMatrix, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
    """A grid cell as an Optuna trial: each axis a categorical of the axis's values."""
    from optuna.distributions import CategoricalDistribution

    params, dists = {}, {}
    for key, value in cell.values.items():
        choices = [encode(v) for v in m.spec.axes.get(key, [])]
        if encode(value) not in choices:
            choices.append(encode(value))
        params[key] = encode(value)
        dists[key] = CategoricalDistribution(choices)
    return params, dists


def build(
    m: LoadedMatrix, grid: list[Cell], groups: set[str], ledger_root: Path
) -> tuple[list[Cell], SearchPlan | None]:
    """The cells of a matrix with a search or a pruner, and its search plan."""
    spec = m.spec
    if spec.search is None and spec.pruner is None:
        return grid, None
    metric, mode = objective(m)
    p = spec.pruner
    asha = None if p is None else asha_of(p)
    space = None if spec.search is None else Space(spec.search.space)
    plan = SearchPlan(
        m, ledger_root / "search", ledger_root / "cells", groups, metric, mode, space, asha
    )
    if spec.search is None:
        key = f"grid-{metric}-{mode}"
        study = Study(key, f"{spec.name}/{key}", None, plan.root / "studies" / "grid")
        plan.studies.append(study)
        plan.members = {c.id: (study, None) for c in grid}
        return grid, plan
    cells: list[Cell] = []
    for point in grid:
        fingerprint = space.fingerprint() if space else ""
        overrides = sorted([*spec.base, *point.overrides])
        s = spec.search
        key = _digest(spec.recipe, overrides, fingerprint, s.method, s.seed, metric, mode)[:12]
        study = Study(key, f"{spec.name}/{key}", point, plan.root / "studies" / key)
        plan.studies.append(study)
        asked = journal.read_slots(study.dir)
        for index in range(plan.trials):
            values = plan.deterministic(study, index)
            if values is None and index in asked:
                values = asked[index].get("values")
            cell = None if values is None else plan.trial_cell(study, index, values)
            study.slots.append(cell)
            if cell is not None:
                plan.members[cell.id] = (study, index)
                cells.append(cell)
    if spec.restarts is not None:
        states = {c.id: CellRecord(plan.cells_dir, c.id).state() for c in cells}
        for study in plan.studies:
            chosen = plan.chosen(study, states)
            if chosen:
                plan.restarts += plan.restart_cells(study, chosen)
    named = unique_names([*cells, *plan.restarts])
    by_id = {c.id: c for c in named}
    for study in plan.studies:
        study.slots = [None if c is None else by_id[c.id] for c in study.slots]
    plan.restarts = [by_id[c.id] for c in plan.restarts if c.id in by_id]
    return named, plan


def unique_names(cells: list[Cell]) -> list[Cell]:
    """Run names unique within the matrix (``_<id[:6]>`` on a collision), ids deduplicated
    (two slots that sampled the same values are one cell)."""
    seen: set[str] = set()
    kept = []
    for c in cells:
        if c.id not in seen:
            seen.add(c.id)
            kept.append(c)
    counts: dict[str, int] = {}
    for c in kept:
        counts[c.run_name] = counts.get(c.run_name, 0) + 1
    return [
        c
        if counts[c.run_name] == 1
        else Cell(c.id, c.values, c.overrides, f"{c.run_name}_{c.id[:6]}", c.origin, c.tags)
        for c in kept
    ]
