"""Per-class Dice against a baseline: another group of the matrix, or a CSV a group keeps.

The CSV is one row per class with a ``class`` column (a class name, or a label value as in
``summarize_optimizer_results.py``'s ``baseline_per_class_stats.csv``; 0, the background, is
skipped), ``dice_mean`` and optionally ``dice_std`` and ``n`` (how many runs the mean is
over). Its figures are taken as given (a CSV has no per-case values, so no paired test is
possible against it: the table shows the difference of means and says so).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
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


def read_csv(path: Path, classes: list[str], order: list[str] | None) -> dict[str, dict[str, Any]]:
    """class name -> {"mean", "std", "n"} from a per-class statistics CSV (module doc)."""
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
            out[name] = {
                "mean": float(row["dice_mean"]),
                "std": float(row.get("dice_std") or "nan"),
                "n": int(float(row["n"])) if row.get("n") else None,
            }
        except ValueError as exc:
            raise RunnerError(f"{path}:{line}: {exc}") from None
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
                row["p_holm"] = paired[f"vs_baseline_{c}_p_holm"]
                row["holds"] = paired[f"vs_baseline_{c}_holds"]
            out.append(row)
    return out
