"""SLURM through submitit: cells go out as job arrays and requeue themselves on time-out.

* ``submit`` sends N cells as job arrays of at most MaxArraySize (or ``array_size``) cells,
  one ``sbatch`` each, with the ``%N`` throttle of ``array_parallelism``; each array waits for
  the previous one to end (``afterany``) so that the throttle holds for the whole sweep.
* Each cell runs as :class:`SlurmCellJob`, a :class:`~runner.job.cell.CellJob` that is also
  submitit-``Checkpointable``: SLURM warns it ``signal_delay_s`` before its time limit (or on
  preemption: SIGTERM, or the warning signal through ``scancel --signal``); the recipe stops
  at its next step and writes a step checkpoint, submitit (or SLURM, on a preemption)
  requeues the same job id, and it resumes from that step into the same MLflow run.
* Requeues are recorded in the attempt's ``slurm.json`` (see :class:`SlurmCellJob`). The sweep
  does not wait (mode ``return``): the cluster keeps the queue, ``runner status`` reads the
  ledger, and :func:`query_states` asks SLURM about the whole matrix at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import submitit

from runner.errors import RunnerError
from runner.executors.base import Backend, JobEnd
from runner.executors.slurm.cluster import (
    END_KINDS,
    controller_problem,
    job_ends,
    job_usage,
    live_jobs,
    max_array_size,
    query_states,
    show_config,
)
from runner.executors.slurm.job import SlurmCellJob
from runner.executors.slurm.options import SlurmExecutorOptions
from runner.job.cell import CellJob

__all__ = ["SlurmBackend", "SlurmCellJob", "SlurmExecutorOptions", "query_states"]


class SlurmBackend(Backend):
    kind = "slurm"
    job_class = SlurmCellJob
    modes = ("return", "follow")  # the cluster keeps the queue; `runner status` follows

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

    @classmethod
    def unreachable(cls, options: Any) -> str | None:
        problem = controller_problem(timeout_s=10.0)
        return f"the SLURM controller can't be reached here: {problem}" if problem else None

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
            with _options_over_environment(self.options):
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

    @classmethod
    def usage(cls, job_ids: list[str]) -> tuple[dict[str, tuple[float, int]], str | None]:
        return job_usage(job_ids)

    def _checkpointable(self, job: CellJob) -> SlurmCellJob:
        if not isinstance(job, SlurmCellJob):
            raise TypeError(f"the slurm backend runs {SlurmCellJob.__name__}s, not {type(job)}")
        o = self.options
        return dataclasses.replace(job, time_limit_min=o.time_min, signal_delay_s=o.signal_delay_s)

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
            if kind == "oom":  # the cgroup of --mem: host memory (runner.job.memory)
                reason = f"host: {reason}; {self._mem_asked()}"
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
        """Out of memory when accounting or slurmstepd says so (host memory: the job's
        cgroup), else lost, with SLURM's state asked once more (submitit's cached one can be
        stale)."""
        job_id = str(job.job_id)
        ends, _ = self.ended([job_id])
        if job_id in ends and ends[job_id].reason.startswith("oom:"):
            return ends[job_id].reason
        lost = super().end_reason(job)
        if killed := OOM_KILL_LINE.search(lost):  # accounting not there yet: the log's word
            what = f"OUT_OF_MEMORY ({killed.group(0)}); {self._mem_asked()}"
            return f"oom: host: slurm: {what}; {lost.removeprefix('lost: ')}"
        states, _ = query_states([job_id])
        return f"{lost}; SLURM state {states.get(job_id)}"

    def _mem_asked(self) -> str:
        mem = self.options.mem_gb
        return f"--mem {f'{mem:g}G' if mem else 'cluster default'}"


#: slurmstepd's line when the kernel killed a process of the job's memory cgroup.
OOM_KILL_LINE = re.compile(r"Detected \d+ oom[-_ ]kill event\(s\) in StepId=\d+(?:_\d+)?\.\w+")


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


#: sbatch's input variables that override an #SBATCH line, for the options a matrix sets.
_OVERRIDING_VARIABLES = {
    "partition": "SBATCH_PARTITION",
    "account": "SBATCH_ACCOUNT",
    "qos": "SBATCH_QOS",
    "constraint": "SBATCH_CONSTRAINT",
    "gres": "SBATCH_GRES",
    "time_min": "SBATCH_TIMELIMIT",
}


@contextmanager
def _options_over_environment(options: SlurmExecutorOptions) -> Iterator[None]:
    """While sbatch runs: a value the matrix states wins over the user's shell. sbatch lets
    ``SBATCH_PARTITION`` and the like override the script's ``#SBATCH`` lines, so a cluster
    login that exports a default partition would silently send every cell elsewhere."""
    hidden = {
        var: os.environ.pop(var)
        for key, var in _OVERRIDING_VARIABLES.items()
        if key in options.model_fields_set and var in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(hidden)
