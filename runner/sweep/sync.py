"""Uploading what cells kept in their spool while their tracking store could not be written.

A cell whose store write fails past its retries (a server that is down, an sqlite file that
stays locked) appends the values to its ``cells/<id>/spool/`` (the file names and formats are
in :mod:`recipes.contract`: metrics, tags and params, and its final state) and trains on.
Sync sends each spooled metric that the run's history does not already hold (same key, step,
timestamp and value), so running it twice, after an interrupted sync, or after a write that
reached the store although the cell saw it fail, doubles nothing; then it moves the spool
files aside into ``spool/synced/``.

``runner sync`` does it for every cell; ``status``, ``sweep`` and ``resume`` do it on their
own for the cells that have ended (:func:`upload_ended`): a running cell may still append to
its spool, and moving the file under it could lose a line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes.contract import SPOOL_FINAL, SPOOL_METRICS, SPOOL_TAGS
from runner import tracking
from runner.ledger import TERMINAL, CellState
from runner.plan import Plan

if TYPE_CHECKING:
    from mlflow import MlflowClient

BATCH = 500
SPOOL_FILES = (SPOOL_METRICS, SPOOL_TAGS, SPOOL_FINAL)


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


def spooled(plan: Plan, cell_ids: list[str]) -> list[str]:
    """Those of ``cell_ids`` with something in their spool and a run to send it to."""
    out = []
    for cid in cell_ids:
        record = plan.ledger.cell(cid)
        spool = record.dir / "spool"
        if any((spool / n).exists() for n in SPOOL_FILES) and record.run_id:
            out.append(cid)
    return out


def sync(plan: Plan, cell_ids: list[str] | None = None) -> SyncOutcome:
    """Upload the spools of ``cell_ids`` (all cells by default)."""
    uri = plan.tracking_uri
    todo = spooled(plan, [c.id for c in plan.cells] if cell_ids is None else cell_ids)
    outcome = SyncOutcome()
    if not todo:
        return outcome
    tracking.check_reachable(uri)
    client = tracking.client(uri)
    for cid in todo:
        _sync_cell(plan, client, cid, outcome)
    return outcome


def _sync_cell(plan: Plan, client: MlflowClient, cid: str, outcome: SyncOutcome) -> None:
    from mlflow.entities import Metric, Param

    record = plan.ledger.cell(cid)
    spool = record.dir / "spool"
    files = [spool / n for n in SPOOL_FILES]
    run_id = str(record.run_id)
    outcome.cells.append(cid)
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
    entries = _lines(files[1])
    params = {e["key"]: e["value"] for e in entries if e.get("kind") == "param"}
    have_params = client.get_run(run_id).data.params if params else {}
    # MLflow refuses to log a param twice (even with the same value): send the new ones.
    items = [Param(k, v) for k, v in params.items() if k not in have_params]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    for tag in entries:
        if tag.get("kind") != "param":
            client.set_tag(run_id, tag["key"], tag["value"])
    if files[2].exists():
        final = json.loads(files[2].read_text())
        tracking.finish_run(plan.tracking_uri, run_id, final["state"], final.get("reason"))
        outcome.runs_ended += 1
    done = spool / "synced" / time.strftime("%Y%m%d-%H%M%S")
    done.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f.exists():
            f.rename(done / f.name)


def upload_ended(plan: Plan, states: dict[str, CellState]) -> str | None:
    """Sync the spools of the cells that have ended; a warning when the store can't take
    them now (they stay in the spool for the next ``status`` or ``runner sync``)."""
    ended = spooled(plan, [cid for cid, s in states.items() if s.state in TERMINAL])
    if not ended:
        return None
    try:
        sync(plan, ended)
    except Exception as exc:  # the store is down or locked: nothing is lost, only late
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return (
            f"{len(ended)} ended cells keep metrics in their spool: the tracking store "
            f"{plan.tracking_uri} can't take them now ({first}); the next `runner status` "
            "or `runner sync` uploads them"
        )
    return None
