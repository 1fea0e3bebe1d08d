"""What a cell's process keeps up around the recipe: a heartbeat for the runner to see it
alive, and the reason an exception gives in the ledger (``lost:``, ``oom:``,
``cancelled``...). What signals mean to it is :mod:`runner.job.signals`'."""

from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
import traceback
from typing import Any

from runner import tracking
from runner.job import memory
from runner.ledger import Attempt, records

HEARTBEAT_S = 10.0


def spare_final_collection() -> None:
    """In a job's own process (submitit's task), which ends once the job returns: move every
    object to the collector's permanent generation, so that the interpreter's exit skips a
    last collection over all that torch, MONAI and MLflow allocated (measured: 6 s of a
    loaded machine's wall clock, 1.4 s of CPU, during which the slot looked busy). atexit
    handlers still run and objects still go as their references do; only cycles are left to
    the process's end. Never in a process that goes on (the debug executor's)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == "submitit.core._submit":
        gc.freeze()
        atexit.register(_exit_once_the_result_is_saved)  # after the imports': it runs first


def _exit_once_the_result_is_saved() -> None:
    """The task's first atexit handler: once submitit has saved the job's result (the cell's
    outcome is in the ledger and its MLflow run ended before that), end the process now. The
    interpreter's own exit (the other handlers, then every module torch, MONAI and MLflow
    loaded torn down) took ~0.2-0.4 s during which the slot looked busy. Loader workers are
    ended as multiprocessing's own handler would; the exit status is the one Python would
    give (1 when the job raised). Without a saved result, the normal exit runs."""
    from submitit import JobEnvironment

    try:
        with open(JobEnvironment().paths.result_pickle, "rb") as saved:
            kind = pickle.load(saved)[0]
    except Exception:
        return
    for child in multiprocessing.active_children():
        child.terminate()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0 if kind == "success" else 1)


class CellLost(BaseException):
    """Raised inside a cell whose job is being taken away from outside (a stopped container):
    its message is the ledger reason, which starts with ``lost:`` so that it is resumable.
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (the
    MLflow logger's spool fallback is one) swallows it and lets the cell train on."""


def failure_reason(exc: BaseException, memory_at_start: dict[str, Any] | None = None) -> str:
    """The ledger reason of ``exc``; out of memory says which memory and the evidence
    (:mod:`runner.job.memory`), given the cell's memory facts at its start."""
    if isinstance(exc, CellLost):
        return str(exc)
    name = type(exc).__name__
    oom = memory.oom_reason(exc, memory_at_start)
    if oom is not None:
        return oom
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled"
    return f"exception: {name}: {exc}"[:500]


def tag_remedy(uri: str, run_id: str, attempt: Attempt) -> None:
    """An attempt with out-of-memory remedies (``remedy.json``, written at its claim) tags
    its run with them and logs what they changed; best effort: the ledger holds them."""
    remedy = attempt.load(records.Remedy)
    if remedy is None or not remedy.steps:
        return
    try:
        tracking.tag_remedy(uri, run_id, attempt.number, remedy.steps, remedy.changed)
    except Exception:
        traceback.print_exc()


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
        self.attempt.save(records.Heartbeat(time=time.time(), extra=dict(self.latest)))

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


def training_lines_to_stdout() -> None:
    """The recipe's progress lines (a line per epoch or logging window, ``logging`` at INFO
    under ``recipes``) into the job's stdout, its ``.out`` log (``runner logs``); the
    libraries' own INFO chatter stays out."""
    logger = logging.getLogger("recipes")
    if not any(getattr(h, "runner_job", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler.runner_job = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
