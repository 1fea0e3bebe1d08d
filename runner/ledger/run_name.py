"""A cell's MLflow run name in the ledger (``cells/<id>/run_name``): recorded once, when the
run-name template has ``{started}`` (runner.matrix.names), so that resumes keep it."""

from __future__ import annotations

import os
from pathlib import Path


class RunNameRecord:
    """Mixed into :class:`runner.ledger.store.CellRecord` (its ``dir``)."""

    dir: Path

    @property
    def run_name(self) -> str | None:
        """The run's name, set once at its first start; None before."""
        try:
            return (self.dir / "run_name").read_text().strip() or None
        except FileNotFoundError:
            return None

    def set_run_name(self, name: str) -> str:
        """Record the run's name once; return the name already recorded if there is one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.dir / "run_name", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return self.run_name or name
        with os.fdopen(fd, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        return name
