"""What a signal means to a running cell: one policy for every executor.

A cell's process hears from the outside only through signals, and what one means depends
on who sends it. Each executor's job class states its table in a few lines
(``CellJob.signals``), as submitit's ``job_environment`` does for its own executors:

==========  =========  ==============================================================
executor    signal     meaning
==========  =========  ==============================================================
local       SIGINT     CANCEL: ``runner cancel`` (the task, never its loader workers)
docker      SIGINT     CANCEL: ``runner cancel`` (``docker kill --signal INT``)
            SIGTERM    LOST: the container is stopped from outside (``docker stop``,
                       the daemon stopping or restarting)
slurm       SIGINT     CANCEL
            SIGTERM    PREEMPTED: SLURM preempts the job (it requeues it after the
                       partition's GraceTime)
            SIGUSR2    WARNING: the time limit (or a preemption) is near (``--signal``):
                       checkpoint and requeue
==========  =========  ==============================================================

One rule holds for all of them: under a cancel request (``runner cancel`` writes
``cancel.json`` into the attempt before it signals anything), every signal but the warning
means CANCEL: scancel's SIGTERM, and a ``docker stop`` after the grace period, included.

What the job does with each meaning is :meth:`runner.job.cell.CellJob.on_signal`'s: at once
(raise) outside training; inside it, a DDP rank (and any SLURM stop) asks the recipe to stop
at its next step and save, so that the ranks stop together and the cell resumes from there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]


class Meaning(Enum):
    CANCEL = "cancel"  # runner cancel: record cancelled, end the run KILLED
    LOST = "lost"  # stopped from outside the runner: record lost (resume takes it)
    PREEMPTED = "preempted"  # the scheduler takes the node back and requeues the job
    WARNING = "warning"  # the time limit is near: checkpoint, requeue, resume


#: Each executor's table (see the module's docstring).
LOCAL: Mapping[int, Meaning] = {signal.SIGINT: Meaning.CANCEL}
DOCKER: Mapping[int, Meaning] = {signal.SIGINT: Meaning.CANCEL, signal.SIGTERM: Meaning.LOST}


def slurm(warning: int) -> Mapping[int, Meaning]:
    """SLURM's table; ``warning``: the signal ``--signal`` sends (submitit's, SIGUSR2)."""
    return {
        signal.SIGINT: Meaning.CANCEL,
        signal.SIGTERM: Meaning.PREEMPTED,
        warning: Meaning.WARNING,
    }


def meaning(table: Mapping[int, Meaning], signum: int, cancel_requested: bool) -> Meaning:
    """What ``signum`` means now: its entry, or CANCEL under a cancel request."""
    found = table[signum]
    return Meaning.CANCEL if cancel_requested and found is not Meaning.WARNING else found


@contextlib.contextmanager
def handling(table: Mapping[int, Meaning], handler: Handler) -> Iterator[dict[int, Any]]:
    """``handler`` for every signal of ``table`` in this block, whatever disposition the
    process inherited: a process started by a script's ``cmd &``, nohup, cron or some CI
    runners inherits SIGINT *ignored*, and a cancel would be lost. Yields the handlers it
    replaced (submitit's own, which SLURM's requeue calls). Python sets handlers on the main
    thread only; elsewhere (never the case under submitit) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    previous = {signum: signal.signal(signum, handler) for signum in table}
    try:
        yield previous
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
