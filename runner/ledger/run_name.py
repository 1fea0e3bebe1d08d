"""A cell's MLflow run name in the ledger (``cells/<id>/run_name``): recorded once, when the
run-name template has ``{started}`` (runner.matrix.names), so that resumes keep it.

:func:`record_once` and :func:`read_recorded` are the write-once text files of a cell (its
``run_name`` here, its ``run_id`` in runner.ledger.store)."""

from __future__ import annotations

import os
from pathlib import Path


def read_recorded(path: Path) -> str | None:
    """The text recorded in ``path`` (stripped); None when there is none."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def record_once(path: Path, value: str) -> str:
    """Write ``value`` to ``path`` unless the file exists (``O_EXCL``: of racing writers, one
    wins); return the value recorded, the earlier one if there was one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return read_recorded(path) or value
    with os.fdopen(fd, "w") as f:
        f.write(value)
        f.flush()
        os.fsync(f.fileno())
    return value


class RunNameRecord:
    """Mixed into :class:`runner.ledger.store.CellRecord` (its ``dir``)."""

    dir: Path

    @property
    def run_name(self) -> str | None:
        """The run's name, set once at its first start; None before."""
        return read_recorded(self.dir / "run_name")

    def set_run_name(self, name: str) -> str:
        """Record the run's name once; return the name already recorded if there is one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return record_once(self.dir / "run_name", name)
