"""``runner report``: compare a matrix's cells honestly, grouped over seeds.

- per group (all axes but ``seed``): n, mean ± std (sample std) of each cell's best value of
  its selection metric (the recipe's ``training.select``: val Dice, max, by default; the EM
  study's adapted Rand error, min) and of its val Dice at that epoch, overall and per class,
  best first by the selection metric;
- the marginal effect of each axis value: the mean of the group means that have that value,
  minus the mean of all group means (so every other axis is averaged over);
- ``--baseline GROUP``: per-class deltas of every group against one group;
- test metrics (``runner evaluate MATRIX``) beside validation: mean ± std and the 95 % CI
  over seeds, and against the baseline a paired comparison over the test cases (mean
  difference, bootstrap CI, Wilcoxon, Holm across groups; ``significance.py``). Groups are
  ranked by validation, the selection metric; test figures are reported, never ranked on.

Figures come from the MLflow runs the ledger points at, so they match the UI; per-case test
values come from each cell's ``test/summary.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import tracking
from runner.errors import RunnerError, did_you_mean
from runner.matrix.cells import Cell, Labels, label_of, run_name_tokens
from runner.plan import Plan
from runner.report import significance
from runner.report.intervals import seed_interval
from runner.report.mlflow_view import is_seed_axis


@dataclass
class CellResult:
    cell: Cell
    run_id: str
    best: float  # val Dice at best_epoch
    best_epoch: int | None
    per_class: dict[str, float]
    curve: list[tuple[int, float]]  # (epoch, val_dice)
    test: dict[str, float] = field(default_factory=dict)  # test_* metrics of the run
    test_cases: dict[str, dict[str, float]] = field(default_factory=dict)  # case -> dice_*
    metric_rules: str | None = None  # the run's param: how its metrics are defined
    #: The out-of-memory remedies its last attempt trained with (runner.matrix.on_oom).
    remedy: list[str] = field(default_factory=list)
    #: What chose best_epoch: the selection metric, max | min, its value there.
    select_metric: str = "val_dice"
    select_mode: str = "max"
    selected: float = math.nan


@dataclass
class Group:
    label: str
    values: dict[str, Any]
    cells: list[CellResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.cells)

    def selection(self) -> tuple[float, float]:
        """Mean ± std of the cells' selection values (what the groups are ranked by)."""
        return _mean_std([c.selected for c in self.cells])

    def stats(self, key: str | None = None) -> tuple[float, float]:
        return _mean_std(
            [c.best if key is None else c.per_class.get(key, math.nan) for c in self.cells]
        )

    def scores(self, key: str | None = None, test: bool = False) -> list[float]:
        """Each cell's best val Dice (or test Dice), overall or for class ``key``."""
        if test:
            name = "test_dice" if key is None else f"test_dice_{key}"
            return [c.test[name] for c in self.cells if name in c.test]
        return [c.best if key is None else c.per_class.get(key, math.nan) for c in self.cells]

    def case_values(self, key: str | None = None) -> dict[str, float]:
        """Per test case, the mean over this group's cells (its seeds) of that case's Dice."""
        name = "dice" if key is None else f"dice_{key}"
        by_case: dict[str, list[float]] = {}
        for c in self.cells:
            for case, row in c.test_cases.items():
                if math.isfinite(row.get(name, math.nan)):
                    by_case.setdefault(case, []).append(row[name])
        return {case: statistics.fmean(xs) for case, xs in by_case.items()}


def _mean_std(values: list[float]) -> tuple[float, float]:
    xs = [x for x in values if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def _best_point(points: list[tuple[int, float]], mode: str) -> tuple[int, float]:
    """The best (epoch, value), the earliest of equals (as the recipe keeps best.pt)."""
    sign = 1.0 if mode == "max" else -1.0
    finite = [p for p in points if not math.isnan(p[1])] or points
    return max(finite, key=lambda p: (sign * p[1], -p[0]))


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
        metric, mode, _ = s.selected()
        if metric == "val_dice":
            points = curve
        else:
            chosen = client.get_metric_history(s.run_id, metric)
            points = sorted((int(m.step), float(m.value)) for m in chosen)
        if not points:
            continue
        best_epoch, selected = _best_point(points, mode)
        best = dict(curve).get(best_epoch, math.nan)
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
        test = {k: float(v) for k, v in run.data.metrics.items() if k.startswith("test_")}
        summary = plan.ledger.cell(cell.id).dir / "test" / "summary.json"
        result = CellResult(
            cell, s.run_id, best, best_epoch, per_class, curve, test, read_cases(summary)
        )
        result.select_metric, result.select_mode, result.selected = metric, mode, selected
        result.metric_rules = run.data.params.get("metric_rules")
        result.remedy = list(s.remedy)
        results.append(result)
    return results, classes


def ranking(results: list[CellResult]) -> tuple[str, str]:
    """(metric, mode) the groups are ranked by: the cells' common selection metric; val Dice
    (max) when cells were selected on different metrics (then no one metric ranks them)."""
    chosen = {(r.select_metric, r.select_mode) for r in results}
    return chosen.pop() if len(chosen) == 1 else ("val_dice", "max")


def read_cases(summary: Path) -> dict[str, dict[str, float]]:
    """Per case of an nnU-Net ``summary.json``: ``dice`` (the mean over its scored classes)
    and ``dice_<class>``; {} when there is none."""
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return {}
    labels = data.get("labels", {})
    out = {}
    for i, entry in enumerate(data.get("metric_per_case", [])):
        case = entry.get("case") or Path(entry.get("reference_file", f"case{i}")).name
        row = {f"dice_{labels.get(k, k)}": float(m["Dice"]) for k, m in entry["metrics"].items()}
        scored = [v for v in row.values() if math.isfinite(v)]
        row["dice"] = statistics.fmean(scored) if scored else math.nan
        out[str(case)] = row
    return out


def group_label(values: dict[str, Any], groups: set[str], labels: Labels | None = None) -> str:
    """A group's name: its cells' run-name tokens without the seed axes (labels as runs)."""
    rest = {k: v for k, v in values.items() if not is_seed_axis(k)}
    return "_".join(run_name_tokens(rest, groups, labels)) or "all"


def make_groups(
    plan: Plan, results: list[CellResult], separate_remedied: bool = False
) -> list[Group]:
    """Groups best first by the selection metric (:func:`ranking`); unscored ones last.
    ``separate_remedied``: a cell that trained with out-of-memory remedies joins a group of
    its own configuration and remedies (``unet_adamw (remedied: halve_batch)``), not the cells that
    trained as the matrix says."""
    groups: dict[str, Group] = {}
    names = set(plan.recipe.groups)
    for r in results:
        label = group_label(r.cell.values, names, plan.matrix.labels)
        if separate_remedied and r.remedy:
            label += f" (remedied: {'+'.join(r.remedy)})"
        rest = {k: v for k, v in r.cell.values.items() if not is_seed_axis(k)}
        groups.setdefault(label, Group(label, rest)).cells.append(r)
    return rank_groups(list(groups.values()))


def rank_groups(groups: list[Group]) -> list[Group]:
    """Best first by the cells' selection metric (:func:`ranking`); unscored groups last."""
    metric, mode = ranking([c for g in groups for c in g.cells])
    sign = -1.0 if mode == "max" else 1.0

    def key(g: Group) -> float:
        value = g.stats()[0] if metric == "val_dice" else g.selection()[0]
        return math.inf if math.isnan(value) else sign * value

    return sorted(groups, key=key)


def marginal_effects(groups: list[Group], labels: Labels | None = None) -> list[dict[str, Any]]:
    """Per axis value (by its label where the matrix gives one: ``outer0`` for a cv fold)."""
    means = [g.stats()[0] for g in groups]
    overall = statistics.fmean(means) if means else math.nan
    axes = list(dict.fromkeys(k for g in groups for k in g.values))
    rows = []
    for axis in axes:
        by_value: dict[str, list[float]] = {}
        for g, m in zip(groups, means, strict=True):
            if axis in g.values:
                value = g.values[axis]
                shown = label_of(axis, value, labels, derive=False) or str(value)
                by_value.setdefault(shown, []).append(m)
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
            "remedied": sum(1 for c in g.cells if c.remedy),
            "dice_mean": mean,
            "dice_std": std,
            **{f"axis.{k}": v for k, v in g.values.items()},
        }
        metric, mode = ranking(g.cells)
        if metric != "val_dice":  # the selection's own columns, beside the Dice at its epoch
            row["select_metric"], row["select_mode"] = metric, mode
            row["select_mean"], row["select_std"] = g.selection()
        for c in classes:
            cm, cs = g.stats(c)
            row[f"dice_{c}_mean"], row[f"dice_{c}_std"] = cm, cs
            if base is not None:
                row[f"delta_{c}"] = cm - base.stats(c)[0]
        if base is not None:
            row["delta_mean"] = mean - base.stats()[0]
        val = seed_interval(g.scores())  # t, clipped to [0, 1], noted when n < 3
        row["dice_ci_low"], row["dice_ci_high"] = val["ci_low"], val["ci_high"]
        row["dice_ci_note"] = val["ci_note"]
        row.update(_test_columns(g, classes))
        rows.append(row)
    if base is not None:
        _paired_columns(rows, groups, classes, base)
    return rows


def _test_columns(g: Group, classes: list[str]) -> dict[str, Any]:
    """Test Dice over the group's cells (those evaluated): mean, std, 95 % CI, n."""
    test = seed_interval(g.scores(test=True))
    if not test["n"]:
        return {}
    row = {f"test_dice_{k}": test[k] for k in ("mean", "std", "ci_low", "ci_high", "ci_note")}
    row["test_n"] = test["n"]
    for c in classes:
        per_class = significance.t_interval(g.scores(c, test=True))
        row[f"test_dice_{c}_mean"], row[f"test_dice_{c}_std"] = per_class["mean"], per_class["std"]
    return row


def _paired_columns(
    rows: list[dict[str, Any]], groups: list[Group], classes: list[str], base: Group
) -> None:
    """Each group against the baseline over the test cases, overall and per class:
    ``vs_baseline[_<class>]_{n_cases,delta,ci_low,ci_high,p,p_holm,holds}``."""
    for key in [None, *classes]:
        per_case = {g.label: g.case_values(key) for g in groups}
        if not per_case[base.label]:
            continue
        results = significance.compare({k: v for k, v in per_case.items() if v}, base.label)
        prefix = "vs_baseline_" if key is None else f"vs_baseline_{key}_"
        for row in rows:
            if row["group"] in results:
                row.update(significance.as_row(results[row["group"]], prefix))


def fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"
