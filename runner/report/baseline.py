"""Per-class Dice against a baseline: another group of the matrix, or a CSV a group keeps.

The CSV is one row per class with a ``class`` column (a class name, or a label value as in
``summarize_optimizer_results.py``'s ``baseline_per_class_stats.csv``; 0, the background, is
skipped), ``dice_mean`` and optionally ``dice_std`` and ``n`` (how many runs the mean is
over). A CSV has no per-case values, so no paired test is possible against it: each
group's per-class mean, std and n over its runs (seeds) are compared with the row's by
Welch's unequal-variance t-test from summary statistics
(``scipy.stats.ttest_ind_from_stats(equal_var=False)``, two-sided), Holm-adjusted across the
groups within a class, when both sides have n >= 2 and a std. Without ``n`` (no column, no
``--baseline-n`` / matrix ``report.baseline_n``) the table shows the difference of means
only, and says so. ``dice_std`` is read as the sample std (ddof 1); a CSV written with
numpy's ``np.std`` (ddof 0, as ``summarize_optimizer_results.py`` does) is converted with
``baseline_std_ddof: 0`` (std x sqrt(n / (n - 1))).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import tracking
from runner.errors import RunnerError, did_you_mean, format_choices
from runner.plan import Plan
from runner.report import significance
from runner.report.stats import CellResult, Group

BACKGROUND = ("0", "background")


def label_order(plan: Plan, results: list[CellResult]) -> list[str] | None:
    """Class names by label value (index 0 the background): from a cell's test summary, else
    the ``split.json`` a cell logged; None when neither is there."""
    for r in results:
        path = plan.ledger.cell(r.cell.id).dir / "test" / "summary.json"
        try:
            labels = json.loads(path.read_text()).get("labels") or {}
        except (OSError, ValueError):
            continue
        if labels:
            return [labels[k] for k in sorted(labels, key=int)]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = tracking.client(plan.tracking_uri)
    for r in results[:1]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(r.run_id, "split.json", tmp)
                split = json.loads(Path(path).read_text())
            except Exception:  # no split.json (older runs) or no store: names only then
                return None
        return [str(c) for c in split.get("classes", [])] or None
    return None


@dataclass(frozen=True)
class CsvBaseline:
    """A per-class statistics CSV and how to read it (module doc)."""

    path: Path
    n: int | None = None  # runs per row when the CSV has no n column
    std_ddof: int = 1  # 0: the CSV's std is numpy's population std


def csv_baseline(
    plan: Plan,
    path: str | None,
    n: int | None,
    std_ddof: int | None,
    group_baseline: str | None,
) -> CsvBaseline | None:
    """The CSV to compare with: the command line's, else the matrix's ``report:`` block
    (a path relative to the project) unless a group baseline was asked for."""
    spec = plan.matrix.spec.report
    if path is None and group_baseline is None and spec.baseline_csv:
        found = Path(spec.baseline_csv)
        path = str(found if found.is_absolute() else plan.workdir / found)
    if path is None:
        return None
    return CsvBaseline(
        Path(path),
        n if n is not None else spec.baseline_n,
        std_ddof if std_ddof is not None else spec.baseline_std_ddof,
    )


def read_csv(
    path: Path, classes: list[str], order: list[str] | None, n: int | None = None, ddof: int = 1
) -> dict[str, dict[str, Any]]:
    """class name -> {"mean", "std", "n"} from a per-class statistics CSV (module doc);
    ``n``: for a CSV without an n column; ``ddof``: how its std was computed."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, fields = list(reader), list(reader.fieldnames or [])
    except OSError as exc:
        raise RunnerError(f"--baseline-csv {path}: {exc.strerror or exc}") from None
    missing = [c for c in ("class", "dice_mean") if c not in fields]
    if missing:
        raise RunnerError(
            f"--baseline-csv {path}: no column {', '.join(missing)}; it has "
            f"{', '.join(fields) or 'none'} (expected class, dice_mean[, dice_std, n])"
        )
    lower = {c.lower(): c for c in classes}
    out: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(rows, start=2):
        key = (row.get("class") or "").strip()
        if key.lower() in BACKGROUND:
            continue
        if key.isdigit():
            if order is None or int(key) >= len(order):
                raise RunnerError(
                    f"{path}:{line}: class {key} is a label value, and this matrix's label "
                    f"values are unknown or fewer; name the class instead: {', '.join(classes)}"
                )
            key = order[int(key)]
        name = lower.get(key.lower())
        if name is None:
            raise RunnerError(
                f"{path}:{line}: class '{key}' is not a class of this matrix; classes: "
                f"{format_choices(classes)}{did_you_mean(key, classes)}"
            )
        try:
            mean = float(row["dice_mean"])
            std = float(row.get("dice_std") or "nan")
            rows_n = int(float(row["n"])) if row.get("n") else n
        except ValueError as exc:
            raise RunnerError(f"{path}:{line}: {exc}") from None
        if ddof == 0 and rows_n is not None and rows_n >= 2:
            std *= math.sqrt(rows_n / (rows_n - 1))  # population -> sample std
        out[name] = {"mean": mean, "std": std, "n": rows_n}
    return out


def per_class_rows(
    groups: list[Group],
    classes: list[str],
    rows: list[dict[str, Any]],
    base: Group | None = None,
    from_csv: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (group, class): the group's mean ± std over its cells, the baseline's,
    the difference, and for a group baseline with test cases the paired test (Holm)."""
    others = [g for g in groups if base is None or g.label != base.label]
    everyone = [*others, *([base] if base else [])]
    test = bool(everyone) and all(g.scores(test=True) for g in everyone)
    by_group = {r["group"]: r for r in rows}
    out = []
    for g in others:
        for c in classes:
            mine = significance.t_interval(g.scores(c, test=test))
            if base is not None:
                theirs = significance.t_interval(base.scores(c, test=test))
                b_mean, b_std, b_n = theirs["mean"], theirs["std"], theirs["n"]
            elif from_csv is not None and c in from_csv:
                b_mean, b_std, b_n = (from_csv[c][k] for k in ("mean", "std", "n"))
            else:
                continue
            delta = mine["mean"] - b_mean
            row = {
                "group": g.label,
                "class": c,
                "source": "test" if test else "val",
                "mean": mine["mean"],
                "std": mine["std"],
                "n": mine["n"],
                "baseline": base.label if base else "csv",
                "baseline_mean": b_mean,
                "baseline_std": b_std,
                "baseline_n": b_n,
                "delta": delta,
                "delta_pct": 100 * delta / b_mean if b_mean else math.nan,
            }
            paired = by_group.get(g.label, {})
            if test and base is not None and f"vs_baseline_{c}_p_holm" in paired:
                row["test"] = "wilcoxon"
                row["p_holm"] = paired[f"vs_baseline_{c}_p_holm"]
                row["holds"] = paired[f"vs_baseline_{c}_holds"]
            elif base is None:
                row.update(_welch(mine, b_mean, b_std, b_n))
            out.append(row)
    if from_csv is not None:
        _holm_per_class(out)
    return out


def _welch(mine: dict[str, Any], mean: float, std: float, n: int | None) -> dict[str, Any]:
    """Welch's t-test of the group's runs against a CSV row, where both sides allow it."""
    if not n or n < 2 or mine["n"] < 2 or not (math.isfinite(std) and math.isfinite(mine["std"])):
        why = "the CSV gives no n" if not n else "fewer than 2 runs on a side, or no std"
        return {"test": None, "no_test": why}
    welch = significance.welch(mine["mean"], mine["std"], mine["n"], mean, std, n)
    return {"test": "welch", "t": welch.t, "df": welch.df, "p": welch.p}


def _holm_per_class(rows: list[dict[str, Any]]) -> None:
    """Holm across the groups compared within each class (as the paired tests are)."""
    for c in dict.fromkeys(r["class"] for r in rows):
        tested = [r for r in rows if r["class"] == c and r.get("test") == "welch"]
        for r, adjusted in zip(tested, significance.holm([r["p"] for r in tested]), strict=True):
            r["p_holm"] = adjusted
            r["holds"] = math.isfinite(adjusted) and adjusted < significance.ALPHA
