"""The job side of a SLURM cell: a :class:`~runner.job.cell.CellJob` that survives its time
limit and preemption by requeueing itself (submitit's ``Checkpointable``), and says so in the
attempt's ``slurm.json``."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from runner.job import signals
from runner.job.cell import CellJob, current_job_id
from runner.job.signals import Meaning
from runner.ledger import CellRecord, Slurm, Status


@dataclass
class SlurmCellJob(CellJob, Checkpointable):
    """A cell that survives its time limit and preemption: it requeues and resumes.

    Its signals (:func:`runner.job.signals.slurm`): the warning ``--signal`` sends before
    the time limit asks the recipe to stop at its next step; once that step's checkpoint is
    written, submitit's handler requeues the same job id (``scontrol requeue``) and the job
    exits. Should the recipe not stop within half of ``signal_delay_s`` (a long validation),
    the signal is raised again and requeues at once: the cell then resumes from its last
    checkpoint. A preemption's SIGTERM also stops the recipe at a step; SLURM requeues the
    job itself after the partition's GraceTime. Under a cancel request SIGTERM is scancel's
    and cancels (the policy's rule for every executor).

    ``attempts/NNNN/slurm.json`` (one writer: the job) holds::

        {"job_id": "123_4", "host": ..., "restarts": 1, "starts": 2,
         "requeues": [{"time": ..., "kind": "timeout", "ran_s": 61.2, "job_id": ...}]}

    ``restarts`` is SLURM's own count (SLURM_RESTART_COUNT: also requeues by an admin or
    after a node failure); ``requeues`` lists those this job asked for itself. While requeued,
    the attempt's status reads ``submitted`` with the reason, never ``failed``.
    """

    #: The job's limit, for telling a time-out from a preemption in the record.
    time_limit_min: int = 0
    #: Seconds between the warning signal and the kill: the recipe gets half to stop.
    signal_delay_s: int = 90

    _started: float = field(default=0.0, init=False, repr=False)
    #: The warning signal, once it came (the grace timer raises it again).
    _warned: int | None = field(default=None, init=False, repr=False)

    def signal_table(self) -> Mapping[int, Meaning]:
        return signals.slurm(submitit.JobEnvironment._usr_sig())

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Nothing to save: the recipe wrote its step checkpoint (or last.pt), the ledger has
        # the run. A fresh copy: this start's state (handlers, stop request) stays here.
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self), *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        self._started = time.time()
        if not int(os.environ.get("SLURM_PROCID") or 0):  # DDP: rank 0 writes slurm.json
            self._note_start()
        return super().__call__()

    def on_signal(self, meaning: Meaning, signum: int, frame: FrameType | None) -> None:
        if meaning is Meaning.WARNING:
            if self._warned is None and self.request_stop(meaning):
                self._warned = signum
                grace = threading.Timer(self.signal_delay_s / 2, self._grace_over, (signum,))
                grace.daemon = True
                grace.start()
                return
            self._requeue(signum, frame)
        elif meaning is Meaning.PREEMPTED:
            # Save the step while we can; outside training, submitit's own handler (which
            # ignores SIGTERM, waiting for SLURM to requeue the job).
            inner = self._inner.get(signum)
            if not self.request_stop(meaning) and callable(inner):
                inner(signum, frame)
        else:
            super().on_signal(meaning, signum, frame)

    def continue_elsewhere(self, result: Any) -> None:
        """The recipe stopped at a step: on the warning, requeue now the way submitit does
        (and exit); preempted by SIGTERM alone, wait for SLURM's requeue."""
        if self._warned is not None:
            self._requeue(self._warned, None)  # exits after a requeue; else raises
        self._note_requeued("preempted")
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(max(60, self.signal_delay_s))  # SLURM's kill ends this wait
        raise RuntimeError("preempted by SIGTERM, but SLURM neither killed nor requeued it")

    def _grace_over(self, signum: int) -> None:
        if self._in_recipe:  # still training: requeue now, from the last checkpoint
            os.kill(os.getpid(), signum)

    def _requeue(self, signum: int, frame: FrameType | None) -> None:
        """submitit's handler checkpoints, runs ``scontrol requeue`` and raises SystemExit.
        Unwound through :meth:`CellJob.__call__`, that exit would be recorded as a failure
        (ledger and MLflow) of a cell that is in fact requeued; so after a successful requeue
        the job records it and exits here. When submitit does not requeue (too many
        time-outs), its error still unwinds and the cell is recorded as failed."""
        handler = self._inner.get(signum)
        if not callable(handler):
            raise RuntimeError("warned of the time limit outside a submitit job: no requeue")
        try:
            handler(signum, frame)
        except SystemExit:
            try:
                self._note_requeued()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

    # -- bookkeeping -------------------------------------------------------------------------

    def _record(self) -> CellRecord:
        return CellRecord(Path(self.cells_dir), self.cell_id)

    def _note_start(self) -> None:
        attempt = self._record().attempt(self.attempt)
        data = attempt.load(Slurm) or Slurm()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        data.job_id, data.host, data.time = current_job_id(), socket.gethostname(), time.time()
        data.starts += 1
        data.restarts = max(restarts, len(data.requeues))
        attempt.save(data)
        if data.restarts:
            self._tag_run(str(data.restarts))

    def _tag_run(self, restarts: str) -> None:
        """Best effort: show the requeue count in MLflow too (the ledger has it for sure)."""
        run_id = self._record().run_id
        if not run_id:
            return
        try:
            from runner import tracking

            tracking.client(self.tracking_uri).set_tag(run_id, "runner.slurm_restarts", restarts)
        except Exception as exc:
            print(f"could not tag the MLflow run with its restarts: {exc}", file=sys.stderr)

    def _note_requeued(self, kind: str | None = None) -> None:
        """Called once this job is requeued: record it, before SLURM kills us."""
        attempt = self._record().attempt(self.attempt)
        ran_s = time.time() - (self._started or time.time())
        limit_s = self.time_limit_min * 60
        # submitit's own rule for whether this was the time limit (and uses up a requeue).
        timed_out = limit_s and ran_s >= min(0.8 * limit_s, limit_s - 600)
        kind = kind or ("timeout" if timed_out else "preempted")
        data = attempt.load(Slurm) or Slurm()
        event = {"time": time.time(), "kind": kind, "ran_s": ran_s, "job_id": current_job_id()}
        data.requeues.append(event)
        data.restarts = max(data.restarts, len(data.requeues))
        attempt.save(data)
        status = attempt.load(Status) or Status()
        status.state, status.requeues, status.time = "submitted", len(data.requeues), time.time()
        status.reason = (
            f"requeued after {kind} ({len(data.requeues)} so far); resumes from its checkpoint"
        )
        attempt.save(status)
