"""How ``make test`` spreads the suite over pytest-xdist workers.

Each worker records, during collection, the work unit of every test (tests/conftest.py:
a module, the Docker tests, or a clock-bound test alone) in the run's directory; the
controller's scheduler reads that record and hands out whole units, in collection order
(longest chains first). xdist's own ``--dist loadgroup`` would do the grouping from
``xdist_group`` marks, but it renames the test ids to carry the group, which pytest 9.2's
node ids no longer allow (the groups were silently ignored); a scheduler of our own
depends on nothing of pytest's internals.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from xdist.scheduler import LoadScopeScheduling

from tests.infra.shared import run_dir

GROUPS = "groups.json"


def record_groups(groups: dict[str, str]) -> None:
    """Write the test id -> work unit map (every worker writes the same; last one wins)."""
    fd, tmp = tempfile.mkstemp(dir=run_dir(), prefix=".groups.")
    with os.fdopen(fd, "w") as f:
        json.dump(groups, f)
    os.replace(tmp, run_dir() / GROUPS)


class GroupScheduling(LoadScopeScheduling):
    """xdist's scope scheduling, with the scopes the workers recorded, never reordered."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False  # keep the suite's order: longest first
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:  # every worker has collected (and recorded) by now
            self._groups = json.loads((run_dir() / GROUPS).read_text())
        return self._groups.get(nodeid) or nodeid.rsplit("::", 1)[0]
