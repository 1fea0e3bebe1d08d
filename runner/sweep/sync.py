"""``runner sync``: upload what cells kept locally while the tracking server was unreachable.

A cell whose metric upload fails appends them to its ``cells/<id>/spool/`` (the file names and
formats are in :mod:`recipes.contract`: metrics, tags, and its final state) and trains on.
Sync sends each spooled metric that the run's history does not already hold (same key, step,
timestamp and value), so running it twice, or after an interrupted sync, doubles nothing; then
it moves the spool files aside into ``spool/synced/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.contract import SPOOL_FINAL, SPOOL_METRICS, SPOOL_TAGS
from runner import tracking
from runner.plan import Plan

BATCH = 500


@dataclass
class SyncOutcome:
    cells: list[str] = field(default_factory=list)
    metrics_sent: int = 0
    metrics_present: int = 0
    runs_ended: int = 0


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: the rest still counts
            continue
    return out


def sync(plan: Plan) -> SyncOutcome:
    from mlflow.entities import Metric

    uri = plan.tracking_uri
    tracking.check_reachable(uri)
    client = tracking.client(uri)
    outcome = SyncOutcome()
    for cell in plan.cells:
        record = plan.ledger.cell(cell.id)
        spool = record.dir / "spool"
        files = [spool / n for n in (SPOOL_METRICS, SPOOL_TAGS, SPOOL_FINAL)]
        if not any(f.exists() for f in files) or not record.run_id:
            continue
        run_id = record.run_id
        outcome.cells.append(cell.id)
        metrics = _lines(files[0])
        for key in sorted({m["key"] for m in metrics}):
            have = {(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)}
            missing = [
                Metric(key, m["value"], m["timestamp"], m["step"])
                for m in metrics
                if m["key"] == key and (m["step"], m["timestamp"], m["value"]) not in have
            ]
            outcome.metrics_present += sum(1 for m in metrics if m["key"] == key) - len(missing)
            for i in range(0, len(missing), BATCH):
                client.log_batch(run_id, metrics=missing[i : i + BATCH])
            outcome.metrics_sent += len(missing)
        for tag in _lines(files[1]):
            client.set_tag(run_id, tag["key"], tag["value"])
        if files[2].exists():
            final = json.loads(files[2].read_text())
            tracking.finish_run(uri, run_id, final["state"], final.get("reason"))
            outcome.runs_ended += 1
        done = spool / "synced" / time.strftime("%Y%m%d-%H%M%S")
        done.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f.exists():
                f.rename(done / f.name)
    return outcome
