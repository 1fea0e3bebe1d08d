"""The ledger as one table, one row per cell: axes, state, reason, attempts, run id, metrics.

Written as Parquet (pyarrow) for pandas/polars/duckdb, or as JSON for scripts: axis values
as themselves (numbers stay numbers; NaN and infinities, which strict JSON lacks, as the
strings "nan", "inf", "-inf") and times as ISO 8601 in UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.plan import Plan
from runner.report.gpu_hours import CellHours, cell_hours
from runner.sweep.reconcile import accounting


def _native(value: Any) -> Any:
    """A JSON-safe copy of an axis value: itself, except non-finite floats as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_native(v) for v in value]
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    return value


def _iso(attempt: dict[str, Any]) -> dict[str, Any]:
    times = {
        k: datetime.fromtimestamp(v, tz=UTC).isoformat()
        for k in ("started", "ended")
        if isinstance(v := attempt.get(k), (int, float))
    }
    return {**attempt, **times}


def rows(plan: Plan, hours: dict[str, CellHours] | None = None) -> list[dict[str, Any]]:
    """One row per cell; ``hours`` (:func:`runner.report.gpu_hours.cell_hours`) is computed
    (with one sacct call for SLURM attempts) when not given."""
    states = plan.states()
    if hours is None:
        hours = cell_hours(plan, states, accounting(plan)[0])
    out = []
    for cell in plan.cells:
        s = states[cell.id]
        record = plan.ledger.cell(cell.id)
        out.append(
            {
                "cell_id": cell.id,
                "run_name": cell.run_name,
                "axes": {k: _native(v) for k, v in cell.values.items()},
                "overrides": [*plan.matrix.spec.base, *cell.overrides],
                "state": s.state,
                "reason": s.reason,
                "attempts": [_iso(a) for a in record.history()],
                "run_id": s.run_id,
                "best_val_dice": s.best_val_dice,
                "epoch": s.progress.get("epoch"),
                "gpu_hours": hours[cell.id].gpu_hours,
                "wall_hours": hours[cell.id].wall_hours,
            }
        )
    return out


def write_parquet(plan: Plan, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = rows(plan)
    axes = list(dict.fromkeys(k for c in plan.cells for k in c.values))
    columns: dict[str, list[Any]] = {"cell_id": [], "run_name": []}
    for key in axes:  # one string column per axis: values may mix types across cells
        columns[f"axis.{key}"] = []
    for row in data:
        columns["cell_id"].append(row["cell_id"])
        columns["run_name"].append(row["run_name"])
        for key in axes:
            value = row["axes"].get(key)
            columns[f"axis.{key}"].append(None if value is None else str(value))
    keys = ("state", "reason", "run_id", "best_val_dice", "epoch", "gpu_hours", "wall_hours")
    for key in (*keys, "overrides", "attempts"):
        columns[key] = [row[key] for row in data]
    table = pa.table(columns)
    pq.write_table(table, path)
    return path
