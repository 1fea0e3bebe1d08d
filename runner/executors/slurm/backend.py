"""SLURM through submitit: cells go out as job arrays and requeue themselves on time-out.

* ``submit`` sends N cells as job arrays of at most MaxArraySize (or ``array_size``) cells,
  one ``sbatch`` each, with the ``%N`` throttle of ``array_parallelism``; each array waits for
  the previous one to end (``afterany``) so that the throttle holds for the whole sweep.
* Each cell runs as :class:`SlurmCellJob`, a :class:`~runner.job.CellJob` that is also
  submitit-``Checkpointable``: SLURM warns it ``signal_delay_s`` before its time limit (or on
  preemption: SIGTERM, or the warning signal through ``scancel --signal``); the recipe stops
  at its next step and writes a step checkpoint, submitit (or SLURM, on a preemption)
  requeues the same job id, and it resumes from that step into the same MLflow run.
* Requeues are recorded in the attempt's ``slurm.json`` (see :class:`SlurmCellJob`). The sweep
  does not wait (``waits = False``): the cluster keeps the queue, ``runner status`` reads the
  ledger, and :func:`query_states` asks SLURM about the whole matrix at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from runner.errors import RunnerError
from runner.executors.base import Backend, JobEnd
from runner.executors.slurm.cluster import (
    END_KINDS,
    controller_problem,
    job_ends,
    live_jobs,
    max_array_size,
    query_states,
    show_config,
)
from runner.executors.slurm.options import SlurmExecutorOptions
from runner.job import CellJob, current_job_id
from runner.ledger import CellRecord

__all__ = ["SlurmBackend", "SlurmCellJob", "SlurmExecutorOptions", "query_states"]

SLURM_FILE = "slurm"  # attempts/NNNN/slurm.json, written only by the running job


class SlurmCellJob(CellJob, Checkpointable):
    """A cell that survives its time limit: submitit requeues it and it resumes.

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

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Nothing to save: the recipe wrote its step checkpoint (or last.pt), the ledger has
        # the run. A copy without this start's private state (handlers, stop request).
        cell = type(self).__new__(type(self))
        cell.__dict__.update({k: v for k, v in vars(self).items() if not k.startswith("_")})
        return submitit.helpers.DelayedSubmission(cell, *args, **kwargs)

    def on_interrupted(self, result: Any) -> None:
        """The recipe stopped at a step on the warning signal or SIGTERM: requeue now the
        way submitit does (and exit), or, preempted by SIGTERM alone, let SLURM requeue."""
        if getattr(self, "_cancelling", False):  # a DDP cell's ranks stopped for a cancel
            raise KeyboardInterrupt("cancelled: runner cancel (scancel)")
        warning = getattr(self, "_warning", None)
        if warning is not None:
            self._requeue_handler(*warning)  # exits after a requeue; else raises
        self._note_requeued("preempted")
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(max(60, self.signal_delay_s))  # SLURM's kill ends this wait
        raise RuntimeError("preempted by SIGTERM, but SLURM neither killed nor requeued it")

    def __call__(self) -> dict[str, Any]:
        self._started = time.time()
        if not int(os.environ.get("SLURM_PROCID") or 0):  # DDP: rank 0 writes slurm.json
            self._note_start()
        self._wrap_requeue_signal()
        self._cancel_on_sigterm()
        return super().__call__()

    def _grace_over(self, signum: int) -> None:
        if self._in_recipe:  # still training: requeue now, from the last checkpoint
            os.kill(os.getpid(), signum)

    def _cancel_on_sigterm(self) -> None:
        """`runner cancel` records its request, then scancels the job: SLURM sends SIGTERM,
        SIGKILL after KillWait. submitit ignores SIGTERM; under a cancel request the cell
        takes it as the interrupt it is (:meth:`CellJob.cancel_by_signal`): it records
        cancelled and ends its run, and SLURM calls the job CANCELLED. Any other SIGTERM
        goes to submitit."""
        inner = signal.getsignal(signal.SIGTERM)
        attempt = self._record().attempt(self.attempt)

        def on_term(signum: int, frame: FrameType | None) -> None:
            if attempt.read("cancel"):
                return self.cancel_by_signal("cancelled: runner cancel (scancel)")
            # Else a preemption (or the time limit itself): save the step while we can.
            if not self.request_stop("preempted: SIGTERM") and callable(inner):
                inner(signum, frame)

        with contextlib.suppress(ValueError):  # not the main thread: submitit's stays
            signal.signal(signal.SIGTERM, on_term)

    # -- bookkeeping -------------------------------------------------------------------------

    def _record(self) -> CellRecord:
        return CellRecord(Path(self.cells_dir), self.cell_id)

    def _note_start(self) -> None:
        attempt = self._record().attempt(self.attempt)
        data = attempt.read(SLURM_FILE) or {"requeues": [], "starts": 0}
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        data.update(
            job_id=current_job_id(),
            host=socket.gethostname(),
            starts=int(data.get("starts", 0)) + 1,
            restarts=max(restarts, len(data.get("requeues", []))),
            time=time.time(),
        )
        attempt.write(SLURM_FILE, data)
        if data["restarts"]:
            self._tag_run(str(data["restarts"]))

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
        ran_s = time.time() - getattr(self, "_started", time.time())
        limit_s = self.time_limit_min * 60
        # submitit's own rule for whether this was the time limit (and uses up a requeue).
        timed_out = limit_s and ran_s >= min(0.8 * limit_s, limit_s - 600)
        kind = kind or ("timeout" if timed_out else "preempted")
        data = attempt.read(SLURM_FILE) or {"requeues": []}
        events = [*data.get("requeues", []), {"time": time.time(), "kind": kind, "ran_s": ran_s}]
        events[-1]["job_id"] = current_job_id()
        data.update(requeues=events, restarts=max(int(data.get("restarts", 0)), len(events)))
        attempt.write(SLURM_FILE, data)
        status = attempt.read("status") or {}
        attempt.write(
            "status",
            {
                **status,
                "state": "submitted",
                "reason": f"requeued after {kind} ({len(events)} so far); resumes from its "
                "checkpoint",
                "requeues": len(events),
                "time": time.time(),
            },
        )

    def _wrap_requeue_signal(self) -> None:
        """Stop the recipe at a step, then requeue; record the requeue and leave at once.

        While the recipe trains, the warning signal only asks it to stop at its next step
        (``request_stop``); once its step checkpoint is written, :meth:`on_interrupted`
        runs submitit's handler. Should the recipe not stop within half of
        ``signal_delay_s`` (a long validation, a recipe that ignores the request), the signal
        is raised again and requeues at once: the cell then resumes from its last checkpoint.

        submitit's handler checkpoints, runs ``scontrol requeue`` and raises SystemExit.
        Unwound through :meth:`CellJob.__call__`, that exit would be recorded as a failure
        (ledger and MLflow) of a cell that is in fact requeued; so after a successful requeue
        the job records it and exits here. When submitit does not requeue (too many
        time-outs), its error still unwinds and the cell is recorded as failed.
        """
        sig = submitit.JobEnvironment._usr_sig()
        inner = signal.getsignal(sig)
        if not callable(inner):  # not under submitit (called directly, in a test)
            return
        handler: Callable[[int, FrameType | None], Any] = inner

        def requeue(signum: int, frame: FrameType | None) -> None:
            try:
                handler(signum, frame)
            except SystemExit:
                try:
                    self._note_requeued()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(0)

        def on_warning(signum: int, frame: FrameType | None) -> None:
            if self._warning is None and self.request_stop("time limit or preemption warning"):
                self._warning = (signum, None)
                grace = threading.Timer(self.signal_delay_s / 2, self._grace_over, (signum,))
                grace.daemon = True
                grace.start()
                return
            requeue(signum, frame)

        self._warning: tuple[int, FrameType | None] | None = None  # (signal, frame)
        self._requeue_handler = requeue
        # Outside the main thread signal.signal raises: submitit's handler then stays.
        with contextlib.suppress(ValueError):
            signal.signal(sig, on_warning)


class SlurmBackend(Backend):
    kind = "slurm"
    waits = False  # the cluster keeps the queue; `runner status` follows the cells

    def __init__(self, options: SlurmExecutorOptions, folder: Path) -> None:
        super().__init__(options, folder)
        self.options: SlurmExecutorOptions = options
        self._max_array: int | None = None
        #: One entry per sbatch call: (SLURM job id of the array, number of cells in it).
        self.arrays: list[tuple[str, int]] = []

    @property
    def max_array_size(self) -> int:
        if self._max_array is None:  # asked once per backend, not per submission
            cap = max_array_size(show_config())
            self._max_array = min(cap, self.options.array_size or cap)
        return self._max_array

    def _executor(self) -> submitit.SlurmExecutor:
        o = self.options
        executor = submitit.SlurmExecutor(
            folder=self.folder, max_num_timeout=o.max_requeues, python=o.python
        )
        params: dict[str, Any] = {
            "job_name": o.job_name or self.folder.parent.name,
            "time": o.time_min,
            "partition": o.partition,
            "account": o.account,
            "qos": o.qos,
            "constraint": o.constraint,
            "cpus_per_task": o.cpus_per_task,
            "ntasks_per_node": o.gpus_per_cell,  # one task per rank of the cell's DDP group
            "mem": None if o.mem_gb is None else f"{round(o.mem_gb * 1024)}M",
            "gres": o.gres,
            "gpus_per_task": o.gpus_per_task if o.gres is None and o.gpus_per_task else None,
            "setup": list(o.setup) or None,
            "srun_args": list(o.srun_args) or None,
            "signal_delay_s": o.signal_delay_s,
            "additional_parameters": dict(o.sbatch_extra) or None,
        }
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def preflight(self) -> None:
        """The controller must answer before a cell is claimed (else a sweep records an
        attempt for a submission that never happened)."""
        problem = controller_problem(timeout_s=10.0)
        if problem:
            raise RunnerError(
                f"executor kind 'slurm': the SLURM controller can't be reached here: {problem}\n"
                "check the cluster with `sinfo` and `scontrol ping` (and $SLURM_CONF); for this "
                "machine's test cluster run `make slurm-up`; or run the cells elsewhere with "
                "`runner sweep --executor local` (cell ids don't change)"
            )

    def submit(self, jobs: Sequence[CellJob]) -> list[submitit.Job[Any]]:
        return self.submit_callables([self._checkpointable(j) for j in jobs])

    def submit_callables(self, fns: Sequence[Callable[[], Any]]) -> list[submitit.Job[Any]]:
        """Send these payloads out as job arrays of at most MaxArraySize tasks each."""
        if not fns:
            return []
        try:
            executor = self._executor()
        except RuntimeError as exc:  # submitit: no srun on PATH
            raise RuntimeError(f"executor kind 'slurm' needs a SLURM client here: {exc}") from exc
        size, throttle = self.max_array_size, self.options.array_parallelism
        out: list[submitit.Job[Any]] = []
        previous: str | None = None
        for start in range(0, len(fns), size):
            part = fns[start : start + size]
            extra: dict[str, Any] = {"array_parallelism": throttle or len(part)}
            if throttle and previous:
                # Two arrays at once would each allow `throttle` running cells.
                extra["dependency"] = f"afterany:{previous}"
            executor.update_parameters(**extra)
            submitted = executor.submit_array(list(part))
            previous = submitted[0].job_id.split("_")[0]
            self.arrays.append((previous, len(part)))
            shown = f"%{throttle}" if throttle else "no throttle"
            print(
                f"slurm: cells {start + 1}-{start + len(part)} of {len(fns)} -> job "
                f"{previous} ({submitted[0].job_id}..{submitted[-1].job_id}, {shown})",
                flush=True,
            )
            out.extend(submitted)
        return out

    def _checkpointable(self, job: CellJob) -> SlurmCellJob:
        cell = job.recast(SlurmCellJob)
        cell.time_limit_min = self.options.time_min
        cell.signal_delay_s = self.options.signal_delay_s
        return cell

    def cancel(self, job_ids: list[str]) -> list[str]:
        """scancel these jobs in one call: pending ones are removed, running ones (each task)
        get SIGTERM, their interrupt under a cancel request (SlurmCellJob), then SIGKILL after
        KillWait; SLURM calls them CANCELLED. Returns those scancel did not refuse."""
        if not job_ids:
            return []
        refused = _scancel([], job_ids)
        return [] if refused is None else [j for j in job_ids if j not in refused]

    def alive(self, job_ids: list[str]) -> list[str]:
        return live_jobs(job_ids)

    def kill(self, job_ids: list[str]) -> None:
        _scancel(["--signal=KILL", "--full"], job_ids)
        _scancel([], job_ids)

    def ended(self, job_ids: list[str]) -> tuple[dict[str, JobEnd], str | None]:
        """One sacct call for every job; with accounting down, squeue alone: a job it no
        longer lists whose last sign of life is older than ``lost_after_min`` is lost."""
        ends, problem = job_ends(job_ids)
        out = {}
        for job_id, (state, code) in ends.items():
            kind = END_KINDS[state.split()[0]]
            log = self.folder / f"{job_id}_0_log.err"  # submitit's name: job (or task) 0
            reason = f"slurm: {state} (exit {code})"
            if kind == "lost":
                reason += " without writing an outcome"
            if kind != "slurm":  # the kind first: what `resume --only` selects
                reason = f"{kind}: {reason}"
            where = f"log {log}" if log.exists() else f"no log at {log}"
            out[job_id] = JobEnd(
                state="cancelled" if kind == "cancelled" else "failed",
                reason=f"{reason}; {where}",
                log=str(log) if log.exists() else None,
                tail=_tail(log),
            )
        if problem is None:
            return out, None
        live = set(live_jobs(job_ids))
        for job_id in set(job_ids) - live:
            reason = "lost: no longer in squeue, and SLURM accounting could not say how it ended"
            out[job_id] = JobEnd("failed", reason, certain=False)
        return out, (
            f"SLURM accounting is unavailable ({problem}): ends come from squeue alone; a job "
            "it no longer lists is lost once its cell is silent past the lost-after delay"
        )

    def end_reason(self, job: submitit.Job[Any]) -> str:
        # submitit's cached state can be stale; ask SLURM once more for the message.
        states, _ = query_states([str(job.job_id)])
        return f"{super().end_reason(job)}; SLURM state {states.get(str(job.job_id))}"


def _scancel(args: list[str], job_ids: list[str]) -> set[str] | None:
    """scancel these jobs in one call; the ids it refused, or None when it could not run."""
    try:
        out = subprocess.run(
            ["scancel", "--verbose", *args, *job_ids],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # Only --verbose names the ids it could not act on when given several:
    # "scancel: error: Kill job error on job id 12_3: Invalid job id specified"
    return set(re.findall(r"job id (\S+?):", out.stderr))


def _tail(log: Path, lines: int = 20) -> str:
    """The last lines of a job's log; empty when it is missing (said in the reason)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
