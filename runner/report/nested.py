"""Nested cross-validation in the report (a matrix with ``cv``, :mod:`runner.matrix.cv`).

For each configuration (a report group without its seed and its outer fold) and each outer
fold, the **selected** cell is the done one with the best selection metric (the search's,
else ``val_dice``), which is measured on the inner validation fold only: among the restarts
of a search (its trials ran on outer fold 0 and chose the configuration, so they don't
compete), among the seeds of a grid. ``runner evaluate MATRIX --best`` scores exactly these
cells on their outer fold's held-out subjects (``test_*``), and the report gives, per
configuration, the mean ± std over outer folds of those held-out scores, with the inner
validation Dice of the same cells beside them: their difference is the optimism of reporting
the score a model was selected on.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from runner.ledger import CellState
from runner.matrix import cv as nested
from runner.matrix.cells import Cell
from runner.matrix.search_checks import objective
from runner.plan import Plan
from runner.report.stats import CellResult, group_label
from runner.search.trials import value_of


def _candidates(plan: Plan) -> list[Cell]:
    if plan.search is not None and plan.matrix.spec.search is not None:
        return list(plan.search.restarts)
    return plan.cells


def configuration(plan: Plan, cell: Cell, trials: dict[str, str] | None = None) -> str:
    """A cell's configuration: the trial a restart repeats (its run name without its outer
    fold; ``trials``: run names by id), else its report group without outer fold and seed."""
    names = trials if trials is not None else {c.id: c.run_name for c in plan.cells}
    trial = cell.tags.get("restart.of")
    cv = plan.matrix.spec.cv
    if trial in names and cv is not None:
        folds = {nested.label(k) for k in range(cv.outer)}
        return "_".join(t for t in names[trial].split("_") if t not in folds)
    values = {k: v for k, v in cell.values.items() if k != nested.KEY}
    return group_label(values, set(plan.recipe.groups), plan.matrix.labels)


def selected(plan: Plan, states: dict[str, CellState]) -> list[tuple[str, int, Cell]]:
    """(configuration, outer fold, the selected cell), ordered by configuration and fold."""
    metric, mode = objective(plan.matrix)
    sign = 1.0 if mode == "max" else -1.0
    best: dict[tuple[str, int], tuple[float, Cell]] = {}
    names = {c.id: c.run_name for c in plan.cells}
    for cell in _candidates(plan):
        fold = nested.outer_of(cell.values)
        value = value_of(states[cell.id], metric)
        if states[cell.id].state != "done" or fold is None or value is None:
            continue
        if math.isnan(value):
            continue
        key = (configuration(plan, cell, names), fold)
        if key not in best or sign * value > sign * best[key][0]:  # a tie: the first listed
            best[key] = (value, cell)
    return [(label, fold, cell) for (label, fold), (_, cell) in sorted(best.items())]


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def build(plan: Plan, results: list[CellResult]) -> dict[str, Any] | None:
    """The held-out table's data (None for a matrix without ``cv``)."""
    cv = plan.matrix.spec.cv
    if cv is None:
        return None
    states = plan.states()
    metric, mode = objective(plan.matrix)
    by_id = {r.cell.id: r for r in results}
    folds: list[dict[str, Any]] = []
    for label, fold, cell in selected(plan, states):
        r = by_id.get(cell.id)
        test = r.test if r else {}
        folds.append(
            {
                "configuration": label,
                "outer_fold": fold,
                "cell": cell.id,
                "run_name": cell.run_name,
                "selected_by": f"{metric} ({mode})",
                "selection_value": value_of(states[cell.id], metric),
                "inner_val_dice": states[cell.id].best_val_dice,
                **{k: v for k, v in sorted(test.items()) if k.startswith("test_dice")},
            }
        )
    rows = []
    for label in dict.fromkeys(f["configuration"] for f in folds):
        mine = [f for f in folds if f["configuration"] == label]
        tested = [f for f in mine if f.get("test_dice") is not None]
        val = [f["inner_val_dice"] for f in mine if f["inner_val_dice"] is not None]
        val_mean, val_std = _mean_std(val)
        test_mean, test_std = _mean_std([f["test_dice"] for f in tested])
        gap = [
            f["inner_val_dice"] - f["test_dice"] for f in tested if f["inner_val_dice"] is not None
        ]
        rows.append(
            {
                "configuration": label,
                "outer_folds": len(mine),
                "outer_folds_tested": len(tested),
                "inner_val_dice_mean": val_mean,
                "inner_val_dice_std": val_std,
                "test_dice_mean": test_mean,
                "test_dice_std": test_std,
                "optimism_mean": statistics.fmean(gap) if gap else None,
            }
        )
    # Ranked on selection (inner validation), never on the held-out scores.
    rows.sort(key=lambda r: (r["inner_val_dice_mean"] is None, -(r["inner_val_dice_mean"] or 0)))
    untested = [f["run_name"] for f in folds if f.get("test_dice") is None]
    return {
        "outer": cv.outer,
        "inner": cv.inner,
        "seed": cv.seed,
        "selected_by": f"{metric} ({mode}) on inner fold 0 of each outer fold",
        "among": "restarts" if plan.matrix.spec.search is not None else "seeds",
        "configurations": rows,
        "folds": folds,
        "untested": untested,
    }
