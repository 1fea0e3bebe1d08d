"""Write a report's tables and plots to disk and log them to MLflow as the matrix's summary
run (one run per matrix, tagged ``runner.summary``; a new report replaces its artifacts)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import tracking
from runner.errors import RunnerError
from runner.plan import Plan
from runner.report import search as search_report
from runner.report.baseline import label_order, per_class_rows, read_csv
from runner.report.plots import dice_by_axis, learning_curves, per_class_vs_baseline
from runner.report.stats import collect, group_rows, make_groups, marginal_effects


@dataclass
class Report:
    groups: list[dict[str, Any]]
    effects: list[dict[str, Any]]
    classes: list[str]
    cells_done: int
    cells_total: int
    files: list[Path] = field(default_factory=list)
    summary_run_id: str | None = None
    per_class: list[dict[str, Any]] = field(default_factory=list)  # vs the baseline
    baseline: str | None = None  # a group label, or the CSV's path
    search: dict[str, Any] | None = None  # a search or pruned grid (runner.report.search)


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def build(
    plan: Plan, baseline: str | None, baseline_csv: Path | None = None
) -> tuple[Report, list[Any]]:
    if baseline is not None and baseline_csv is not None:
        raise RunnerError("give --baseline GROUP or --baseline-csv FILE, not both")
    results, classes = collect(plan)
    groups = make_groups(plan, results)
    raw = group_rows(groups, classes, baseline)
    from_csv = None
    if baseline_csv is not None:
        from_csv = read_csv(baseline_csv, classes, label_order(plan, results))
    base = next((g for g in groups if g.label == baseline), None)
    per_class = per_class_rows(groups, classes, raw, base, from_csv)
    rows = [{k: _clean(v) for k, v in r.items()} for r in raw]
    report = Report(rows, marginal_effects(groups), classes, len(results), len(plan.cells))
    report.per_class = [{k: _clean(v) for k, v in r.items()} for r in per_class]
    report.baseline = baseline or (str(baseline_csv) if baseline_csv else None)
    report.search = search_report.build(plan)
    return report, groups


def write(report: Report, groups: list[Any], out_dir: Path, fmt: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    data = {
        "groups": report.groups,
        "effects": report.effects,
        "classes": report.classes,
        "cells_done": report.cells_done,
        "cells_total": report.cells_total,
        "ranked_by": "best val Dice (selection); test figures are reported, never ranked on",
        "baseline": report.baseline,
        "per_class_vs_baseline": report.per_class,
    }
    (out_dir / "report.json").write_text(json.dumps(data, indent=1))
    files.append(out_dir / "report.json")
    keys = list(dict.fromkeys(k for r in report.groups for k in r))
    with open(out_dir / "groups.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(report.groups)
    files.append(out_dir / "groups.csv")
    if report.per_class:
        files.append(_csv(report.per_class, out_dir / "per_class_vs_baseline.csv"))
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(
            [{k: _str_axis(k, r.get(k)) for k in keys} for r in report.groups]
        )
        pq.write_table(table, out_dir / "groups.parquet")
        files.append(out_dir / "groups.parquet")
    if groups:
        files += dice_by_axis(groups, out_dir)
        files.append(learning_curves(groups, out_dir))
    if report.per_class:
        files.append(per_class_vs_baseline(report.per_class, out_dir))
    files += search_report.write(report.search, out_dir)
    return files


def _csv(rows: list[dict[str, Any]], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _str_axis(key: str, value: Any) -> Any:
    return str(value) if key.startswith("axis.") and value is not None else value


def log_summary(plan: Plan, report: Report) -> str:
    """Log the report into the matrix's summary run, creating it on first use."""
    uri = plan.tracking_uri
    client = tracking.client(uri)
    exp_id = tracking.ensure_experiment(uri, plan.matrix.spec.name, plan.workdir / "mlartifacts")
    id_file = plan.ledger.root / "summary_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if run_id is None:
        run = client.create_run(
            exp_id,
            run_name=f"{plan.matrix.spec.name}_summary",
            tags={"runner.summary": "true", tracking.TAG_MATRIX: plan.matrix.spec.name},
        )
        run_id = run.info.run_id
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    for path in report.files:
        client.log_artifact(run_id, str(path), artifact_path="report")
    best = report.groups[0] if report.groups else None
    if best and best.get("dice_mean") is not None:
        client.log_metric(run_id, "best_group_dice_mean", best["dice_mean"])
        client.set_tag(run_id, "runner.best_group", best["group"])
    client.log_metric(run_id, "cells_done", report.cells_done)
    client.set_terminated(run_id, "FINISHED")
    return run_id
