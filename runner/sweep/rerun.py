"""``runner rerun``: train ended cells again from scratch (after fixing a recipe bug, say).

The cell keeps its id and ledger; its next attempt starts a new MLflow run with no
checkpoint. What the earlier attempts left is kept, never overwritten: the run is tagged
``runner.superseded`` (and stays in MLflow as it was), and the cell's ``run_id``,
``checkpoints/`` and ``spool/`` move to ``superseded/<attempts so far>/``.
"""

from __future__ import annotations

import shutil

from runner import tracking
from runner.errors import RunnerError
from runner.ledger import CellRecord
from runner.matrix.cells import Cell
from runner.plan import Plan

#: What a rerun moves aside, in the cell's directory.
MOVED = ("run_id", "checkpoints", "spool")


def supersede(plan: Plan, cells: list[Cell]) -> list[str]:
    """Set each cell's earlier run and checkpoints aside; returns the runs superseded.
    The runs are tagged first: a store that can't be reached refuses the rerun before any
    file moves."""
    runs = []
    for cell in cells:
        record = plan.ledger.cell(cell.id)
        if record.run_id:
            try:
                tracking.retrying(
                    lambda r=record: tracking.supersede(
                        plan.tracking_uri, r.run_id or "", len(r.attempts())
                    )
                )
            except Exception as exc:
                raise RunnerError(
                    f"cell {cell.id}: cannot mark its run {record.run_id} superseded in "
                    f"{plan.tracking_uri} ({exc}); nothing was changed"
                ) from None
            runs.append(record.run_id)
        _move_aside(record)
    return runs


def _move_aside(record: CellRecord) -> None:
    dest = record.dir / "superseded" / f"{len(record.attempts()):04d}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in MOVED:
        if (record.dir / name).exists():
            shutil.move(str(record.dir / name), str(dest / name))
