"""Whether the Docker engine answers, and since when it has not (a dockerd restart).

Kept apart from :mod:`runner.executors.docker.backend` so that each reads on its own.
"""

from __future__ import annotations

import sys
import time

from runner.errors import RunnerError
from runner.executors.docker.engine import UNREACHABLE, client
from runner.ledger import Attempt, Heartbeat


class EngineWatch:
    """Whether the engine answers, and since when it has not.

    A dockerd restart makes every call fail for a few seconds (the socket is gone, or
    refuses). The sweep must neither crash nor hang on that: it waits, and gives a cell up
    only once the engine has been silent *and* the cell's heartbeat stale for ``wait_s``
    (a container can outlive its daemon: the shim keeps it running, and its heartbeat says
    so).
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.down_since: float | None = None
        self.seen_down: set[str] = set()  # containers in flight while the engine was down

    def answers(self) -> bool:
        try:
            client().ping()
        except UNREACHABLE as exc:
            if self.down_since is None:
                self.down_since = time.time()
                print(
                    f"runner: the Docker engine does not answer ({type(exc).__name__}); "
                    f"waiting for it (engine_wait_s={self.wait_s:.0f})",
                    file=sys.stderr,
                    flush=True,
                )
            return False
        if self.down_since is not None:
            print(
                f"runner: the Docker engine answers again after "
                f"{time.time() - self.down_since:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            self.down_since = None
        return True

    def silent_for(self, attempt: Attempt | None) -> float:
        """Seconds since both the engine and this cell last gave a sign of life."""
        last = self.down_since or time.time()
        if attempt is not None:
            beat = attempt.load(Heartbeat)
            last = max(last, float(beat.time if beat else 0))
        return time.time() - last

    def wait_until_up(self) -> None:
        """Before starting containers: wait up to ``wait_s`` for the engine; then a message,
        not a traceback (the cells not started stay pending: their claims die with this
        process)."""
        while not self.answers():
            assert self.down_since is not None
            if time.time() - self.down_since > self.wait_s:
                raise RunnerError(
                    f"executor 'docker': the Docker engine has not answered for "
                    f"{time.time() - self.down_since:.0f} s; start it and run the sweep again"
                )
            time.sleep(1.0)
