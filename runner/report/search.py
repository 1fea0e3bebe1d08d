"""The report of a search (and of a pruned grid): what it tried, what pruning saved, what
mattered, and the restarts.

- the trials table: slot, run name, sampled values, state, epochs run, the rung a pruned
  cell stopped at, its best value of the search metric, its hours;
- the best configuration of each study (by the search metric, among cells run to the end);
- pruning: how many cells stopped at each rung, and the epochs and hours spent against
  running every one of them to ``max_epochs`` (hours to the end are each cell's own hours
  per epoch times ``max_epochs``; on a GPU executor a cell-hour is a GPU-hour);
- the importance of each searched parameter (Optuna's fANOVA when scikit-learn is there,
  else its PED-ANOVA), over every trial's value at the first rung when pruned (every trial
  has one there), else over the trials run to the end; and marginal plots;
- restarts: the best restart (by the search metric) of each configuration for each value
  of the restart axes (e.g. each fold), and the mean ± std (and n) of those.

Files: ``search.json``, ``trials.csv``, ``search_curves.png`` (the metric against epoch
with the rungs drawn), ``search_marginals.png``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from runner import tracking
from runner.ledger import Status
from runner.matrix import cv as nested
from runner.matrix.asha import rung_of_reason
from runner.matrix.cells import label_of
from runner.matrix.search_checks import restart_axes
from runner.plan import Plan
from runner.search.trials import SearchPlan, Study, value_of

if TYPE_CHECKING:
    from runner.ledger import CellRecord


def _effort(record: CellRecord) -> dict[str, Any]:
    """Epochs and hours a cell spent over its attempts, and the rung it was pruned at."""
    epochs, hours, rung = 0, 0.0, None
    for a in record.attempts():
        status = a.load(Status) or Status(state="")
        epochs = max(epochs, int(status.epochs or 0))
        if status.started and status.ended:
            hours += (float(status.ended) - float(status.started)) / 3600
        if status.state == "pruned":
            rung = status.rung if status.rung is not None else rung_of_reason(status.reason)
    return {"epochs": epochs, "hours": hours, "pruned_rung": rung}


def _rows(plan: Plan, search: SearchPlan, study: Study) -> list[dict[str, Any]]:
    states = plan.states()
    cells = [c for c in study.slots if c is not None]
    if study.point is None:  # a pruned grid: every cell
        cells = [c for c in plan.cells if search.study_of(c.id) is study]
    names = (
        search.space.names()
        if search.space
        else list(dict.fromkeys(k for c in cells for k in c.values))
    )
    rows = []
    for i, cell in enumerate(cells):
        s = states[cell.id]
        row: dict[str, Any] = {
            "slot": int(cell.tags.get("search.slot", i)),
            "cell": cell.id,
            "run_name": cell.run_name,
            "state": s.state,
            **_effort(plan.ledger.cell(cell.id)),
            search.metric: value_of(s, search.metric),
            "run_id": s.run_id,
        }
        row.update({f"param.{k}": cell.values.get(k) for k in names})
        rows.append(row)
    return rows


def _curves(plan: Plan, metric: str, rows: list[dict[str, Any]]) -> None:
    """Each row's metric per epoch, from its MLflow run (the figures the UI shows)."""
    client = tracking.client(plan.tracking_uri)
    for row in rows:
        history = client.get_metric_history(row["run_id"], metric) if row["run_id"] else []
        row["curve"] = sorted((int(m.step), float(m.value)) for m in history)
        seconds = client.get_metric_history(row["run_id"], "epoch_seconds") if history else []
        row["epoch_hours"] = statistics.fmean(m.value for m in seconds) / 3600 if seconds else None


def _pruning(search: SearchPlan, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if search.asha is None:
        return None
    ran = [r for r in rows if r["epochs"]]
    full_epochs = len(ran) * search.asha.max_epochs
    spent = sum(r["epochs"] for r in ran)
    hours = sum(r["hours"] for r in ran)
    # To the end: the hours it took, plus its own mean epoch time for each epoch it skipped
    # (start-up is paid once either way).
    full_hours = sum(
        r["hours"]
        + (search.asha.max_epochs - r["epochs"])
        * (r.get("epoch_hours") or r["hours"] / r["epochs"])
        for r in ran
    )
    return {
        "max_epochs": search.asha.max_epochs,
        "rungs": {b: search.asha.rungs(b) for b in range(search.asha.brackets)},
        "pruned_by_rung": dict(
            sorted(Counter(r["pruned_rung"] for r in rows if r["pruned_rung"] is not None).items())
        ),
        "cells_run": len(ran),
        "epochs": spent,
        "epochs_if_full": full_epochs,
        "epochs_saved": 1 - spent / full_epochs if full_epochs else None,
        "hours": hours,
        "hours_if_full": full_hours,
        "hours_saved": 1 - hours / full_hours if full_hours else None,
    }


def _first_rung_value(row: dict[str, Any], epoch: int) -> float | None:
    return next((v for e, v in row.get("curve", []) if e >= epoch), None)


def _importance(search: SearchPlan, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Importance of each searched parameter, or None with too few results."""
    space = search.space
    if space is None or len(space.names()) < 1:
        return None
    if search.asha is not None:
        at = search.asha.min_epochs
        values = [(r, _first_rung_value(r, at)) for r in rows]
        basis = f"{search.metric} at epoch {at} (the first rung: every trial has it)"
    else:
        values = [(r, r[search.metric]) for r in rows if r["state"] == "done"]
        basis = f"best {search.metric} of the trials run to the end"
    values = [(r, v) for r, v in values if v is not None and not math.isnan(v)]
    if len(values) < 3:
        return None
    import optuna

    from runner.search.study import quiet_optuna

    quiet_optuna()
    trials = [
        optuna.trial.create_trial(
            params=space.encode({k: r[f"param.{k}"] for k in space.names()}),
            distributions=space.to_optuna(),
            value=v,
        )
        for r, v in values
    ]
    study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize")
    study.add_trials(trials)
    try:
        import sklearn  # noqa: F401 - fANOVA's random forest

        evaluator: Any = optuna.importance.FanovaImportanceEvaluator(seed=0)
        method = "fANOVA"
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        method = "PED-ANOVA"
    try:
        scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {"method": method, "basis": basis, "error": str(exc)[:200]}
    return {
        "method": method,
        "basis": basis,
        "n": len(values),
        "importance": {k: float(v) for k, v in scores.items()},
    }


def _restarts(plan: Plan, search: SearchPlan) -> list[dict[str, Any]]:
    """Per configuration: the best restart of each restart-axis combination (e.g. each
    fold) by the search metric, then mean ± std and n of those best restarts."""
    r = plan.matrix.spec.restarts
    if r is None or not search.restarts:
        return []
    axes = restart_axes(plan.matrix)  # with cv, the outer folds first
    labels = plan.matrix.labels
    states = plan.states()
    by_config: dict[str, dict[tuple[str, ...], list[float]]] = {}
    for cell in search.restarts:
        value = value_of(states[cell.id], search.metric)
        if states[cell.id].state != "done" or value is None:
            continue
        combo = tuple(
            label_of(k, cell.values[k], labels, derive=False) or str(cell.values[k]) for k in axes
        )
        by_config.setdefault(cell.tags["restart.of"], {}).setdefault(combo, []).append(value)
    pick = max if search.mode == "max" else min
    out = []
    names = {c.id: c.run_name for c in plan.cells}
    for trial_id, combos in by_config.items():
        best = {combo: pick(vs) for combo, vs in combos.items()}
        xs = list(best.values())
        out.append(
            {
                "configuration": names.get(trial_id, trial_id),
                "cell": trial_id,
                "restart_axes": ["outer fold" if k == nested.KEY else k for k in axes],
                "best_restart": {"/".join(k) or "all": v for k, v in best.items()},
                "restarts_done": sum(len(vs) for vs in combos.values()),
                "n": len(xs),
                "mean": statistics.fmean(xs),
                "std": statistics.stdev(xs) if len(xs) > 1 else None,
            }
        )
    return out


def build(plan: Plan) -> dict[str, Any] | None:
    """The search report's data, or None for a matrix without search or pruner."""
    search = plan.search
    if search is None:
        return None
    studies = []
    for study in search.studies:
        rows = _rows(plan, search, study)
        _curves(plan, search.metric, rows)
        full = [r for r in rows if r["state"] == "done" and r[search.metric] is not None]
        sign = 1 if search.mode == "max" else -1
        best = max(full, key=lambda r: sign * r[search.metric], default=None)
        studies.append(
            {
                "study": study.name,
                "point": study.point.values if study.point else None,
                "trials": rows,
                "asked": sum(1 for c in study.slots if c is not None) if study.point else len(rows),
                "best": None if best is None else {k: v for k, v in best.items() if k != "curve"},
                "pruning": _pruning(search, rows),
                "importance": _importance(search, rows),
            }
        )
    spec = plan.matrix.spec.search
    return {
        "metric": search.metric,
        "mode": search.mode,
        "method": spec.method if spec else "grid (axes)",
        "trials_per_study": search.trials or None,
        "studies": studies,
        "restarts": _restarts(plan, search),
    }


def write(data: dict[str, Any] | None, out_dir: Path) -> list[Path]:
    if data is None:
        return []
    from runner.report.search_plots import curves, marginals

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "search.json"
    slim = json.loads(json.dumps(data, default=str))
    for st in slim["studies"]:
        for row in st["trials"]:
            row.pop("curve", None)
            row.pop("epoch_hours", None)
    path.write_text(json.dumps(slim, indent=1))
    files = [path]
    rows = [{"study": st["study"], **row} for st in slim["studies"] for row in st["trials"]]
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(out_dir / "trials.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        files.append(out_dir / "trials.csv")
    files += curves(data, out_dir)
    files += marginals(data, out_dir)
    return files


def _f(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def render(console: Console, data: dict[str, Any] | None) -> None:
    """The search report on the terminal."""
    if data is None:
        return
    metric = data["metric"]
    for st in data["studies"]:
        rows = st["trials"]
        params = [k for k in (rows[0] if rows else {}) if k.startswith("param.")]
        table = Table(
            title=f"{st['study']}: {len(rows)} trials ({data['method']}), "
            f"ranked by {metric} ({data['mode']})",
            title_justify="left",
        )
        for col in ["slot", "run name", *(p[6:] for p in params), "state", "epochs", metric]:
            table.add_column(col)
        sign = -1 if data["mode"] == "max" else 1
        order = sorted(rows, key=lambda r: (r[metric] is None, sign * (r[metric] or 0)))
        for r in order:
            state = r["state"] + (
                f" @rung {r['pruned_rung']}"
                if r["pruned_rung"] is not None and r["state"] == "pruned"
                else ""
            )
            table.add_row(
                str(r["slot"]),
                r["run_name"],
                *(_f(r[p]) for p in params),
                state,
                str(r["epochs"]),
                _f(r[metric]),
            )
        console.print(table)
        if st["best"]:
            b = st["best"]
            shown = ", ".join(f"{p[6:]}={_f(b[p], 6)}" for p in params)
            console.print(f"best: {b['run_name']} ({metric} {_f(b[metric])}): {shown}")
        p = st["pruning"]
        if p:
            rungs = ", ".join(f"rung {k}: {n}" for k, n in p["pruned_by_rung"].items()) or "none"
            console.print(
                f"pruned at each rung: {rungs}; epochs {p['epochs']} of {p['epochs_if_full']} "
                f"(pruning saved {_pct(p['epochs_saved'])} of the epochs), cell-hours "
                f"{p['hours']:.3f} of {p['hours_if_full']:.3f} ({_pct(p['hours_saved'])} saved)"
            )
        imp = st["importance"]
        if imp and imp.get("importance"):
            shown = ", ".join(f"{k} {v:.2f}" for k, v in imp["importance"].items())
            console.print(f"importance ({imp['method']}, {imp['basis']}): {shown}")
    for r in data["restarts"]:
        std = "" if r["std"] is None else f" ± {r['std']:.4f}"
        per = "/".join(r["restart_axes"]) or "configuration"
        console.print(
            f"restarts of {r['configuration']}: best restart per {per}: {metric} "
            f"{r['mean']:.4f}{std} (n={r['n']}, {r['restarts_done']} restarts done)"
        )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"
