"""Which trained cells a test-time command uses, and how the recipe is reached.

A cell is named by its id, an id prefix (4+ characters) or its run name; ``--best [GROUP]``
takes the cell with the best value of its selection metric (the recipe's ``training.select``,
val Dice by default, as the ledger keeps it: selection is on validation, never on test),
overall or within a report group (every axis but ``seed``). ``--ensemble seeds|folds`` adds
the done cells that differ from it only in ``seed`` or only in ``data.fold``; ``--ensemble
cells --cell A --cell B ...`` takes the named cells, whatever their architectures. In a
matrix with nested cross-validation (``cv``), the best of each group is each configuration's
selected cell per outer fold (:mod:`runner.report.nested`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.contract import ModelRef
from runner.errors import RunnerError, did_you_mean, format_choices
from runner.ledger import CellState
from runner.matrix.cells import Cell
from runner.plan import Plan
from runner.recipe import Recipe
from runner.report.nested import selected
from runner.report.stats import group_label

ENSEMBLE_AXES = {"seeds": "seed", "folds": "data.fold"}
CHECKPOINTS = ("best", "last")


def recipe_entry(recipe: str, attr: str) -> Callable[..., Any]:
    """A recipe's ``PREDICT`` / ``EVALUATE`` function, through its package surface."""
    entry = Recipe.load(recipe).entry(attr)
    if entry is None:
        raise RunnerError(
            f"recipe '{recipe}' has no {attr} entry (recipes/{recipe}/__init__.py); "
            "see recipes/__init__.py for the surface a recipe exposes"
        )
    return entry  # type: ignore[no-any-return]


def group_of(plan: Plan, cell: Cell) -> str:
    return group_label(cell.values, set(plan.recipe.groups), plan.matrix.labels)


def find_cell(plan: Plan, text: str, flag: str = "--cell") -> Cell:
    cells = plan.cells
    for cell in cells:
        if text in (cell.id, cell.run_name):
            return cell
    prefixed = [c for c in cells if c.id.startswith(text)] if len(text) >= 4 else []
    if len(prefixed) == 1:
        return prefixed[0]
    names = [c.run_name for c in cells]
    raise RunnerError(
        f"{flag}: no cell '{text}' in {plan.matrix.file} (give an id, an id prefix of 4+ "
        f"characters or a run name); run names: {format_choices(names)}"
        f"{did_you_mean(text, [*names, *(c.id for c in cells)])}"
    )


def _done(plan: Plan, states: dict[str, CellState]) -> list[Cell]:
    return [c for c in plan.cells if states[c.id].state == "done"]


def named_cells(plan: Plan, text: str, states: dict[str, CellState]) -> list[Cell]:
    """``--cells A,B,...``: done cells by id, id prefix or run name, each once."""
    ids = [x.strip() for x in text.split(",") if x.strip()]
    if not ids:
        raise RunnerError("--cells: give cell ids, id prefixes or run names, comma-separated")
    found = [require_done(plan, find_cell(plan, i, "--cells"), states) for i in ids]
    return list({c.id: c for c in found}.values())


def require_done(plan: Plan, cell: Cell, states: dict[str, CellState]) -> Cell:
    state = states[cell.id]
    if state.state != "done":
        done = [c.run_name for c in _done(plan, states)]
        raise RunnerError(
            f"cell {cell.id} ({cell.run_name}) is {state.state}, not done: only trained cells "
            f"predict; done cells: {format_choices(done) if done else 'none yet'}"
        )
    return cell


def _ranked(cells: list[Cell], states: dict[str, CellState]) -> list[Cell]:
    """``cells`` with a selection value, best first; one selection metric for all of them
    (cells selected on different metrics can't be ranked against each other)."""
    scored = [c for c in cells if states[c.id].selected()[2] is not None]
    metrics = sorted({states[c.id].selected()[:2] for c in scored})
    if len(metrics) > 1:
        listed = ", ".join(f"{m} ({mode})" for m, mode in metrics)
        raise RunnerError(
            f"--best: the cells were selected on different metrics ({listed}); name one with --cell"
        )

    def key(c: Cell) -> tuple[float, str]:
        _, mode, value = states[c.id].selected()
        assert value is not None
        return (-value if mode == "max" else value, c.id)

    return sorted(scored, key=key)


def best_cell(plan: Plan, states: dict[str, CellState], group: str | None) -> Cell:
    """The done cell with the best selection value, in ``group`` when given."""
    done = _ranked(_done(plan, states), states)
    if not done:
        raise RunnerError(f"no cell of {plan.matrix.file} is done yet: nothing to predict with")
    if group is not None:
        labels = sorted({group_of(plan, c) for c in done})
        done = [c for c in done if group_of(plan, c) == group]
        if not done:
            raise RunnerError(
                f"--best: no done cell in group '{group}'; groups: "
                f"{format_choices(labels)}{did_you_mean(group, labels)}"
            )
    return done[0]


def best_per_group(plan: Plan, states: dict[str, CellState]) -> list[Cell]:
    if plan.matrix.spec.cv is not None:  # per configuration and outer fold, on inner val
        return [cell for _, _, cell in selected(plan, states)]
    best: dict[str, Cell] = {}
    for cell in _ranked(_done(plan, states), states):  # best first: each group's first
        best.setdefault(group_of(plan, cell), cell)
    return list(best.values())


def siblings(plan: Plan, anchor: Cell, kind: str, states: dict[str, CellState]) -> list[Cell]:
    """``anchor`` and the done cells equal to it but for the ensemble's axis."""
    axis = ENSEMBLE_AXES[kind]
    if axis not in anchor.values:
        axes = list(anchor.values)
        raise RunnerError(
            f"--ensemble {kind}: the matrix has no '{axis}' axis to ensemble over; its axes: "
            f"{', '.join(axes) or 'none'}"
        )
    rest = {k: v for k, v in anchor.values.items() if k != axis}
    return [
        c for c in _done(plan, states) if {k: v for k, v in c.values.items() if k != axis} == rest
    ]


def checkpoint(plan: Plan, cell: Cell, which: str) -> Path:
    folder = plan.ledger.cell(cell.id).checkpoint_dir
    path = folder / f"{which}.pt"
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
        raise RunnerError(
            f"cell {cell.id} ({cell.run_name}): no {path}; checkpoints there: "
            f"{', '.join(present) or 'none'} (--checkpoint best|last)"
        )
    return path


@dataclass
class Member:
    cell: Cell
    ref: ModelRef


def members(plan: Plan, cells: list[Cell], which: str) -> list[Member]:
    """Each cell's composed config (base + its overrides, as its job saw it) and checkpoint."""
    out = []
    for cell in cells:
        cfg = plan.recipe.compose([*plan.matrix.spec.base, *cell.overrides])
        ref = ModelRef(cfg, checkpoint(plan, cell, which), cell.run_name)
        out.append(Member(cell, ref))
    return out
