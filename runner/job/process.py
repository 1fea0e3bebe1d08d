"""What a cell's process keeps up around the recipe: SIGINT handled whatever disposition it
inherited, a heartbeat for the runner to see it alive, and the reason an exception gives in
the ledger (``lost:``, ``oom:``, ``cancelled``...)."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from runner.ledger import Attempt

HEARTBEAT_S = 10.0


class CellLost(BaseException):
    """Raised inside a cell whose job is being taken away from outside (a stopped container):
    its message is the ledger reason, which starts with ``lost:`` so that it is resumable.
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (the
    MLflow logger's spool fallback is one) swallows it and lets the cell train on."""


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, CellLost):
        return str(exc)
    name = type(exc).__name__
    text = str(exc)
    # torch raises OutOfMemoryError on CUDA and a RuntimeError from its CPU allocator.
    if (
        isinstance(exc, MemoryError)
        or "OutOfMemoryError" in name
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
    ):
        return f"oom: {text.splitlines()[0][:300] if text else name}"
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled"
    return f"exception: {name}: {exc}"[:500]


@contextlib.contextmanager
def interruptible(
    handler: Callable[[int, FrameType | None], Any] = signal.default_int_handler,
) -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this block (or calls ``handler``), whatever
    disposition was inherited.

    ``runner cancel`` interrupts a cell with SIGINT. A process started from a script's
    ``cmd &``, ``nohup``, cron or some CI runners inherits SIGINT *ignored*, and Python then
    leaves it ignored: the cancel would be lost and the cell would train on. So the job
    installs Python's own handler itself rather than relying on what it inherited. Python
    sets handlers on the main thread only; elsewhere (never the case under submitit) the
    block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Heartbeat:
    """Rewrites heartbeat.json every few seconds and on every progress report."""

    def __init__(self, attempt: Attempt, interval_s: float = HEARTBEAT_S) -> None:
        self.attempt = attempt
        self.interval_s = interval_s
        self.latest: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="heartbeat")

    def beat(self, progress: dict[str, Any] | None = None) -> None:
        if progress:
            self.latest = {k: v for k, v in progress.items() if isinstance(v, (int, float, str))}
        self.attempt.write("heartbeat", {**self.latest, "time": time.time()})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
