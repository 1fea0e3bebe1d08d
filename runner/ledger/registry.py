"""Which ledgers hold each matrix, for this user: so that a sweep can see cells already done
in another ledger of the same matrix (a ledger made from another working directory by an
older runner, or with another ``sweep_dir``) instead of training them again.

``$RUNNER_STATE_DIR/ledgers.json`` (default ``~/.local/state/runner``): ``{matrix name:
{ledger root: last time a sweep used it}}``, rewritten atomically under a lock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from filelock import FileLock

from runner.ledger.store import Ledger, read_json, write_json_atomic


def _state_dir() -> Path:
    default = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return Path(os.environ.get("RUNNER_STATE_DIR") or default / "runner")


def remember(ledger: Ledger, matrix: str) -> None:
    """Note that a sweep uses ``ledger`` for ``matrix`` (best effort: a read-only home
    only loses the warning)."""
    path = _state_dir() / "ledgers.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            known = read_json(path) or {}
            known.setdefault(matrix, {})[str(ledger.root)] = time.time()
            write_json_atomic(path, known)
    except OSError:
        pass


def others(ledger: Ledger, matrix: str) -> list[Ledger]:
    """The other ledgers of ``matrix`` this user swept, that still exist."""
    known = (read_json(_state_dir() / "ledgers.json") or {}).get(matrix, {})
    roots = [Path(r) for r in known if Path(r) != ledger.root and Path(r).is_dir()]
    return [Ledger(root.parent, matrix) for root in roots]
