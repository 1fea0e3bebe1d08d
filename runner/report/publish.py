"""Write a report's tables and plots to disk and log them to MLflow.

Each ``runner report`` logs a fresh run, ended at once, into the experiment
``<matrix>/reports`` (``REPORTS``), never into the cells' experiment: the cells' runs table
holds cells only (what the saved view groups and averages), and no report reopens an earlier
one (a reopened run's duration would grow with every report). The latest report is the
newest run there; older ones stay as a history. A cell's run gets the report's ``gpu_hours``
and ``wall_hours`` where they differ from those its job logged (``runner.report.gpu_hours``:
SLURM accounting's, for one)."""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import tracking
from runner.errors import RunnerError
from runner.ledger import Status
from runner.plan import Plan
from runner.report import gpu_hours as gh
from runner.report import nested, trust
from runner.report import search as search_report
from runner.report.baseline import CsvBaseline, label_order, per_class_rows, read_csv
from runner.report.missing import groups_without_results
from runner.report.outputs import DIGEST_TAG, digest, earlier_run
from runner.report.plots import dice_by_axis, group_colors, learning_curves, per_class_vs_baseline
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
    nested: dict[str, Any] | None = None  # held-out scores of a cv matrix (report.nested)
    #: The matrix's GPU-hours (gpu_hours.totals, plus "warning") and each cell's.
    gpu_hours: dict[str, Any] = field(default_factory=dict)
    cell_hours: dict[str, gh.CellHours] = field(default_factory=dict)
    #: The code the compared (done) cells ran: digest -> their ids (runner.recipe.code_version).
    code_versions: dict[str, list[str]] = field(default_factory=dict)
    #: How far the comparisons can be trusted (runner.report.trust).
    trust: dict[str, Any] = field(default_factory=dict)
    #: Groups with no figures, and why (runner.report.missing).
    missing: list[dict[str, Any]] = field(default_factory=list)
    #: How the compared cells defined their metrics (the param metric_rules) -> their ids.
    metric_rules: dict[str, list[str]] = field(default_factory=dict)
    #: Done cells that trained with out-of-memory remedies: id -> the steps, and what the
    #: report did with them (REMEDIED: mark, exclude or separate).
    remedied: dict[str, list[str]] = field(default_factory=dict)
    remedied_mode: str = "mark"


#: What ``runner report --remedied`` does with done cells that trained with out-of-memory
#: remedies (a halved batch, checkpointing: the same training by design, yet not the
#: configuration the matrix states): count them in their groups and say so, leave them out,
#: or compare them as groups of their own.
REMEDIED = ("mark", "exclude", "separate")


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def build(
    plan: Plan,
    baseline: str | None,
    baseline_csv: CsvBaseline | Path | None = None,
    accounting: tuple[gh.Usage, str | None] | None = None,
    delta: float | None = None,
    budget_factor: float = trust.BUDGET_FACTOR,
    remedied: str = "mark",
) -> tuple[Report, list[Any]]:
    """The report of the matrix's done cells; ``accounting``: what the executors' accounting
    says the jobs used (:func:`runner.sweep.reconcile.accounting`) for the GPU-hours, else
    the ledger's figures; ``remedied``: one of :data:`REMEDIED`."""
    if baseline is not None and baseline_csv is not None:
        raise RunnerError("give --baseline GROUP or --baseline-csv FILE, not both")
    if remedied not in REMEDIED:
        raise RunnerError(f"--remedied {remedied}: one of {', '.join(REMEDIED)}")
    results, classes = collect(plan)
    with_remedy = {r.cell.id: list(r.remedy) for r in results if r.remedy}
    cells_done = len(results)
    if remedied == "exclude":
        results = [r for r in results if not r.remedy]
    groups = make_groups(plan, results, separate_remedied=remedied == "separate")
    raw = group_rows(groups, classes, baseline)
    from_csv = None
    if isinstance(baseline_csv, Path):
        baseline_csv = CsvBaseline(baseline_csv)
    if baseline_csv is not None:
        csv_file, order = baseline_csv, label_order(plan, results)
        from_csv = read_csv(csv_file.path, classes, order, csv_file.n, csv_file.std_ddof)
    base = next((g for g in groups if g.label == baseline), None)
    per_class = per_class_rows(groups, classes, raw, base, from_csv)
    rows = [{k: _clean(v) for k, v in r.items()} for r in raw]
    # A configuration counts once in the axis effects: its remedied group stays out of them.
    as_stated = [g for g in groups if not (remedied == "separate" and g.cells[0].remedy)]
    effects = marginal_effects(as_stated, plan.matrix.labels)
    report = Report(rows, effects, classes, cells_done, len(plan.cells))
    report.remedied, report.remedied_mode = with_remedy, remedied
    report.per_class = [{k: _clean(v) for k, v in r.items()} for r in per_class]
    report.baseline = baseline or (str(baseline_csv.path) if baseline_csv else None)
    report.search = search_report.build(plan)
    report.nested = nested.build(plan, results)
    _add_hours(plan, report, groups, accounting or ({}, None))
    report.code_versions = code_versions(plan, [r.cell.id for r in results])
    report.missing = groups_without_results(plan, results)
    for r in results:
        report.metric_rules.setdefault(r.metric_rules or trust.NO_RULES, []).append(r.cell.id)
    report.trust = trust.build(
        plan, report.groups, groups, report.cell_hours, baseline=baseline, delta=delta,
        factor=budget_factor, baseline_csv=baseline_csv is not None,
    )  # fmt: skip
    report.trust["notes"] += trust.rules_notes(report.metric_rules)
    return report, groups


def code_versions(plan: Plan, cell_ids: list[str]) -> dict[str, list[str]]:
    """The code each of these cells last trained with, by digest ("unknown": a cell from a
    runner that did not record it)."""
    out: dict[str, list[str]] = {}
    for cid in cell_ids:
        attempts = plan.ledger.cell(cid).attempts()
        status = attempts[-1].load(Status) if attempts else None
        digest = str((status.code or {}).get("digest") or "unknown") if status else "unknown"
        out.setdefault(digest, []).append(cid)
    return out


def code_warning(report: Report, matrix_file: Path) -> str | None:
    """When the compared cells ran different code, say which and how to even it out."""
    if len(report.code_versions) < 2:
        return None
    ranked = sorted(report.code_versions.items(), key=lambda kv: -len(kv[1]))
    shown = ", ".join(f"{digest}: {len(ids)} cells" for digest, ids in ranked)
    older = ",".join(cid for _, ids in ranked[1:] for cid in ids)
    return (
        f"the cells compared ran different code ({shown}); differences between groups may "
        f"be the code's: train the others again with `runner rerun {matrix_file} --cells "
        f"{older}`"
    )


def _add_hours(
    plan: Plan, report: Report, groups: list[Any], accounting: tuple[gh.Usage, str | None]
) -> None:
    """GPU-hours: a column per group (its cells, all their attempts) and the matrix's total
    (every cell, whatever its state: failed and pruned cells cost too)."""
    usage, warning = accounting
    report.cell_hours = gh.cell_hours(plan, usage=usage)
    report.gpu_hours = {**gh.totals(report.cell_hours), "warning": warning}
    by_label = {g.label: g for g in groups}
    for row in report.groups:
        cells = by_label[row["group"]].cells if row["group"] in by_label else []
        row["gpu_hours"] = sum(report.cell_hours[c.cell.id].gpu_hours for c in cells)


def write(report: Report, groups: list[Any], out_dir: Path, fmt: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    data = {
        "groups": report.groups,
        "effects": report.effects,
        "classes": report.classes,
        "cells_done": report.cells_done,
        "cells_total": report.cells_total,
        "ranked_by": _ranked_by(report),
        "baseline": report.baseline,
        "per_class_vs_baseline": report.per_class,
        **({"nested_cv": report.nested} if report.nested else {}),
        "gpu_hours": {
            **report.gpu_hours,
            "cells": [h.row() for h in report.cell_hours.values() if h.attempts],
        },
        "code_versions": report.code_versions,
        "metric_rules": report.metric_rules,
        "trust": report.trust,
        "groups_without_results": report.missing,
        "remedied": {"mode": report.remedied_mode, "cells": report.remedied},
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
    if report.nested and report.nested["folds"]:
        files.append(_csv(report.nested["configurations"], out_dir / "held_out.csv"))
        files.append(_csv(report.nested["folds"], out_dir / "held_out_folds.csv"))
    spent = [h.row() for h in report.cell_hours.values() if h.attempts]
    if spent:
        files.append(_csv(spent, out_dir / "gpu_hours.csv"))
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(
            [{k: _str_axis(k, r.get(k)) for k in keys} for r in report.groups]
        )
        pq.write_table(table, out_dir / "groups.parquet")
        files.append(out_dir / "groups.parquet")
    # One colour per group in every figure (a baseline group keeps its own, hatched).
    colors = group_colors(g.label for g in groups)
    if groups:
        files += dice_by_axis(groups, out_dir, colors)
        files.append(learning_curves(groups, out_dir, colors))
    if report.per_class:
        files.append(per_class_vs_baseline(report.per_class, out_dir, colors))
    files += search_report.write(report.search, out_dir)
    return files


def _ranked_by(report: Report) -> str:
    selected = next((r for r in report.groups if r.get("select_metric")), None)
    what = (
        f"best {selected['select_metric']} ({selected['select_mode']}; training.select)"
        if selected
        else "best val Dice (selection)"
    )
    return f"{what}; test figures are reported, never ranked on"


def _csv(rows: list[dict[str, Any]], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _str_axis(key: str, value: Any) -> Any:
    return str(value) if key.startswith("axis.") and value is not None else value


def reports_experiment(matrix: str) -> str:
    """The experiment a matrix's reports go to: ``/`` can't occur in a matrix name, so this
    never is another matrix's experiment."""
    return f"{matrix}/reports"


def log_summary(plan: Plan, report: Report) -> str:
    """Log the report as a new run of ``<matrix>/reports``, ended at once; correct the
    cells' runs' GPU-hours where the report knows better. Returns the report run's id."""
    uri, name = plan.tracking_uri, plan.matrix.spec.name
    client = tracking.client(uri)
    exp_id = tracking.ensure_experiment(uri, reports_experiment(name), plan.workdir / "mlartifacts")
    _retire_old_summary(plan, client)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run = client.create_run(
        exp_id,
        run_name=f"{name}_report_{stamp}",
        tags={
            "runner.summary": "true",
            tracking.TAG_MATRIX: name,
            # one run per distinct report (runner.report.outputs); its trust notes beside it
            DIGEST_TAG: digest(next(p for p in report.files if p.name == "report.json")),
            "runner.trust": " | ".join(report.trust.get("notes", []))[:4900] or "no caveat",
            "runner.report.remedied": report.remedied_mode,
        },
    )
    run_id = run.info.run_id
    try:
        for path in report.files:
            client.log_artifact(run_id, str(path), artifact_path="report")
        best = report.groups[0] if report.groups else None
        if best and best.get("dice_mean") is not None:
            client.log_metric(run_id, "best_group_dice_mean", best["dice_mean"])
            client.set_tag(run_id, "runner.best_group", best["group"])
        held = (report.nested or {}).get("configurations") or [{}]
        if held[0].get("test_dice_mean") is not None:  # the configuration selection ranks first
            client.log_metric(run_id, "held_out_test_dice_mean", held[0]["test_dice_mean"])
        if best and best.get("select_mean") is not None:
            client.log_metric(run_id, f"best_group_{best['select_metric']}", best["select_mean"])
        client.log_metric(run_id, "cells_done", report.cells_done)
        if report.gpu_hours:
            client.log_metric(run_id, "gpu_hours", report.gpu_hours["gpu_hours"])
            client.log_metric(run_id, "wall_hours", report.gpu_hours["wall_hours"])
        gh.log_all(plan, report.cell_hours)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def earlier_report_run(plan: Plan, report: Report) -> str | None:
    """A finished report run holding exactly this report's content, if there is one."""
    path = next((p for p in report.files if p.name == "report.json"), None)
    if path is None:
        return None
    _retire_old_summary(plan, tracking.client(plan.tracking_uri))  # as log_summary does
    return earlier_run(plan, reports_experiment(plan.matrix.spec.name), digest(path))


def _retire_old_summary(plan: Plan, client: Any) -> None:
    """An older runner kept one summary run among the cells (its id in ``summary_run_id``),
    reopened by every report: delete it (MLflow's soft delete: ``mlflow gc`` purges it,
    ``restore_run`` brings it back) so the cells' table holds cells only."""
    id_file = plan.ledger.root / "summary_run_id"
    if not id_file.exists():
        return
    old = id_file.read_text().strip()
    try:
        if old and client.get_run(old).info.lifecycle_stage == "active":
            client.delete_run(old)
    except Exception:  # gone already, or another store: nothing of it sits among the cells
        pass
    id_file.unlink(missing_ok=True)
