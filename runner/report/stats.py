"""``runner report``: compare a matrix's cells honestly, grouped over seeds.

- per group (all axes but ``seed``): n, mean ± std (sample std) of each cell's best val
  Dice, overall and per class (the per-class values at that cell's best epoch), best first;
- the marginal effect of each axis value: the mean of the group means that have that value,
  minus the mean of all group means (so every other axis is averaged over);
- ``--baseline GROUP``: per-class deltas of every group against one group.

Figures come from the MLflow runs the ledger points at, so they match the UI.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from runner import tracking
from runner.errors import RunnerError, did_you_mean
from runner.matrix.cells import Cell, run_name_tokens
from runner.plan import Plan


@dataclass
class CellResult:
    cell: Cell
    run_id: str
    best: float
    best_epoch: int | None
    per_class: dict[str, float]
    curve: list[tuple[int, float]]  # (epoch, val_dice)


@dataclass
class Group:
    label: str
    values: dict[str, Any]
    cells: list[CellResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.cells)

    def stats(self, key: str | None = None) -> tuple[float, float]:
        xs = [c.best if key is None else c.per_class.get(key, math.nan) for c in self.cells]
        xs = [x for x in xs if not math.isnan(x)]
        if not xs:
            return math.nan, math.nan
        return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def collect(plan: Plan) -> tuple[list[CellResult], list[str]]:
    """The done cells' results from MLflow, and the class names seen."""
    client = tracking.client(plan.tracking_uri)
    states = plan.states()
    results, classes = [], []
    for cell in plan.cells:
        s = states[cell.id]
        if s.state != "done" or not s.run_id:
            continue
        history = client.get_metric_history(s.run_id, "val_dice")
        curve = sorted((int(m.step), float(m.value)) for m in history)
        if not curve:
            continue
        best_epoch, best = max(curve, key=lambda p: (p[1], -p[0]))
        run = client.get_run(s.run_id)
        per_class = {}
        for key in sorted(run.data.metrics):
            if key.startswith("val_dice_"):
                name = key[len("val_dice_") :]
                at = [
                    m.value
                    for m in client.get_metric_history(s.run_id, key)
                    if m.step == best_epoch
                ]
                per_class[name] = float(at[-1]) if at else math.nan
                if name not in classes:
                    classes.append(name)
        results.append(CellResult(cell, s.run_id, best, best_epoch, per_class, curve))
    return results, classes


def group_label(values: dict[str, Any], groups: set[str]) -> str:
    rest = {k: v for k, v in values.items() if k != "seed"}
    return "_".join(run_name_tokens(rest, groups)) or "all"


def make_groups(plan: Plan, results: list[CellResult]) -> list[Group]:
    groups: dict[str, Group] = {}
    names = set(plan.recipe.groups)
    for r in results:
        label = group_label(r.cell.values, names)
        rest = {k: v for k, v in r.cell.values.items() if k != "seed"}
        groups.setdefault(label, Group(label, rest)).cells.append(r)
    return sorted(groups.values(), key=lambda g: -g.stats()[0])


def marginal_effects(groups: list[Group]) -> list[dict[str, Any]]:
    means = [g.stats()[0] for g in groups]
    overall = statistics.fmean(means) if means else math.nan
    axes = list(dict.fromkeys(k for g in groups for k in g.values))
    rows = []
    for axis in axes:
        by_value: dict[str, list[float]] = {}
        for g, m in zip(groups, means, strict=True):
            if axis in g.values:
                by_value.setdefault(str(g.values[axis]), []).append(m)
        if len(by_value) < 2:
            continue  # an axis with one value has no effect to show
        for value, ms in by_value.items():
            mean = statistics.fmean(ms)
            rows.append(
                {
                    "axis": axis,
                    "value": value,
                    "mean": mean,
                    "effect": mean - overall,
                    "groups": len(ms),
                }
            )
    return rows


def group_rows(
    groups: list[Group], classes: list[str], baseline: str | None = None
) -> list[dict[str, Any]]:
    base = None
    if baseline is not None:
        labels = [g.label for g in groups]
        base = next((g for g in groups if g.label == baseline), None)
        if base is None:
            raise RunnerError(
                f"--baseline: no group '{baseline}'; groups: "
                f"{', '.join(labels)}{did_you_mean(baseline, labels)}"
            )
    rows = []
    for g in groups:
        mean, std = g.stats()
        row: dict[str, Any] = {
            "group": g.label,
            "n": g.n,
            "dice_mean": mean,
            "dice_std": std,
            **{f"axis.{k}": v for k, v in g.values.items()},
        }
        for c in classes:
            cm, cs = g.stats(c)
            row[f"dice_{c}_mean"], row[f"dice_{c}_std"] = cm, cs
            if base is not None:
                row[f"delta_{c}"] = cm - base.stats(c)[0]
        if base is not None:
            row["delta_mean"] = mean - base.stats()[0]
        rows.append(row)
    return rows


def fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"
