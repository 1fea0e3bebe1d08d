"""Read-only questions to a SLURM cluster: its limits and the states of many jobs at once.

Every call has a timeout: a wedged slurmctld or slurmdbd must not hang ``runner status``.
The whole matrix is asked about in one ``squeue`` and one ``sacct`` call, never one per cell,
because a sweep of thousands of cells would otherwise hammer the controller.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable

CALL_TIMEOUT_S = 30.0
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default

# "123", "123_4", "123_[0-9,12%2]" (pending array tasks as squeue/sacct fold them)
_FOLDED = re.compile(r"^(?P<base>\d+)_\[(?P<ranges>[\d,\-]+)(?:%\d+)?\]$")


def _run(cmd: list[str], timeout_s: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def show_config(timeout_s: float = CALL_TIMEOUT_S) -> dict[str, str]:
    """``scontrol show config`` as a dict (empty when the controller does not answer)."""
    try:
        out = _run(["scontrol", "show", "config"], timeout_s)
    except (OSError, subprocess.SubprocessError):
        return {}
    config = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def controller_problem(timeout_s: float = CALL_TIMEOUT_S) -> str | None:
    """None when the controller answers ``sinfo``; else what went wrong, in SLURM's words
    (``sbatch: fatal: Could not establish a configuration source``, ...)."""
    try:
        out = _run(["sinfo", "-h", "-o", "%P"], timeout_s)
    except FileNotFoundError:
        return "no SLURM client (sinfo) on PATH"
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within {timeout_s:.0f}s"
    if out.returncode != 0:
        return (out.stderr.strip() or out.stdout.strip() or f"sinfo exited {out.returncode}")[:500]
    return None


def max_array_size(config: dict[str, str] | None = None) -> int:
    """The most tasks one job array may have (array indices run 0 .. MaxArraySize-1)."""
    value = (config if config is not None else show_config()).get("MaxArraySize", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_ARRAY_SIZE


def expand_job_id(job_id: str) -> list[str]:
    """One id per array task for a folded id like ``12_[0-3,7]``; other ids as they are."""
    m = _FOLDED.match(job_id)
    if not m:
        return [job_id]
    out = []
    for part in m["ranges"].split(","):
        lo, _, hi = part.partition("-")
        out.extend(f"{m['base']}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return out


def _parse(text: str) -> dict[str, str]:
    """``JobID|State`` lines into id -> state (``CANCELLED by 0`` -> ``CANCELLED``)."""
    states = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if not sep or "." in job_id:  # job steps (123.batch) are not cells
            continue
        for jid in expand_job_id(job_id):
            states[jid] = state.split()[0] if state.split() else "UNKNOWN"
    return states


def _bases(job_ids: Iterable[str]) -> list[str]:
    # Asking for the array's base id returns all of its tasks in one line each (-r/--array
    # for squeue); asking per task would make the command line as long as the matrix.
    return sorted({j.split("_")[0] for j in job_ids}, key=lambda b: (len(b), b))


def _squeue(bases: list[str], timeout_s: float) -> tuple[dict[str, str], str | None]:
    try:
        out = _run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(bases)], timeout_s
        )
    except FileNotFoundError:
        return {}, "squeue not found"
    except subprocess.TimeoutExpired:
        return {}, f"squeue did not answer within {timeout_s:.0f}s"
    if out.returncode != 0:
        # Every id is gone from the controller's memory (older than MinJobAge): not an error.
        if "Invalid job id" in out.stderr:
            return {}, None
        return {}, f"squeue failed: {out.stderr.strip()[:200]}"
    return _parse(out.stdout), None


def _sacct_rows(
    bases: list[str], fields: str, timeout_s: float, *flags: str
) -> tuple[str | None, str | None]:
    """sacct's parsable output (``|``-separated ``fields``) for these jobs, or the problem.
    -X: allocations only, no steps. With -j and no -S, sacct searches all of history."""
    try:
        out = _run(
            ["sacct", "-X", *flags, "-n", "-P", "-o", fields, "-j", ",".join(bases)], timeout_s
        )
    except FileNotFoundError:
        return None, "sacct not found"
    except subprocess.TimeoutExpired:
        return None, f"sacct did not answer within {timeout_s:.0f}s"
    if out.returncode != 0:
        return None, f"sacct failed: {out.stderr.strip()[:200]}"
    return out.stdout, None


def _sacct(bases: list[str], timeout_s: float) -> tuple[dict[str, str], str | None]:
    stdout, problem = _sacct_rows(bases, "JobID,State", timeout_s)
    return ({}, problem) if stdout is None else (_parse(stdout), None)


#: squeue states of a job some process of which may still run (or is about to).
LIVE_STATES = (
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
)


def live_jobs(job_ids: list[str], timeout_s: float = CALL_TIMEOUT_S) -> list[str]:
    """Those of ``job_ids`` the controller still has queued or running (one squeue call).
    When squeue can't answer, all of them: nothing is presumed gone that may still run."""
    if not job_ids:
        return []
    live, problem = _squeue(_bases(job_ids), timeout_s)
    if problem:
        return list(job_ids)
    return [j for j in job_ids if live.get(j, "").startswith(LIVE_STATES)]


def query_states(
    job_ids: list[str], timeout_s: float = CALL_TIMEOUT_S
) -> tuple[dict[str, str], str | None]:
    """SLURM's state of each job id (``123`` or ``123_4``), asked in one squeue + one sacct call.

    Returns the states (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``,
    ``TIMEOUT``, ``REQUEUED``, ... ; ``UNKNOWN`` for an id neither command knows) and a
    warning when accounting (sacct) could not be asked: the states then come from squeue
    alone, which forgets finished jobs after the cluster's MinJobAge.
    """
    if not job_ids:
        return {}, None
    bases = _bases(job_ids)
    live, squeue_problem = _squeue(bases, timeout_s)
    # squeue (with -t all) still lists jobs that ended within MinJobAge, and its answer wins
    # anyway: accounting is asked only about the ids it no longer knows (reconciliation has
    # already made this command's one sacct call when every id is still live).
    unknown = [j for j in job_ids if j not in live]
    history, sacct_problem = _sacct(_bases(unknown), timeout_s) if unknown else ({}, None)
    # squeue is the controller's live view; sacct lags it by a few seconds but remembers.
    known = {**history, **live}
    states = {j: known.get(j, "UNKNOWN") for j in job_ids}
    warnings = []
    if sacct_problem:
        warnings.append(
            f"SLURM accounting is unavailable ({sacct_problem}); states come from squeue "
            "only, and jobs that ended a while ago show as UNKNOWN"
        )
    if squeue_problem:
        warnings.append(f"the SLURM controller could not be asked ({squeue_problem})")
    return states, "; ".join(warnings) or None


#: sacct states of a job that ended, and how the ledger names them (the reason's kind, which
#: ``resume --only`` selects). CANCELLED is the ledger state ``cancelled``.
END_KINDS = {
    "FAILED": "slurm",
    "BOOT_FAIL": "node_fail",
    "NODE_FAIL": "node_fail",
    "DEADLINE": "timeout",
    "TIMEOUT": "timeout",
    "OUT_OF_MEMORY": "oom",
    "PREEMPTED": "preempted",
    "CANCELLED": "cancelled",
    "COMPLETED": "lost",  # it exited 0 without writing an outcome: only a kill does that
}


def job_ends(
    job_ids: list[str], timeout_s: float = CALL_TIMEOUT_S
) -> tuple[dict[str, tuple[str, str]], str | None]:
    """``{job id: (STATE, exit code)}`` for those of ``job_ids`` that ended (one sacct call),
    and a problem when accounting could not be asked. ``STATE`` keeps sacct's own words
    (``CANCELLED by 0``); the exit code is sacct's ``code:signal``."""
    if not job_ids:
        return {}, None
    stdout, problem = _sacct_rows(_bases(job_ids), "JobID,State,ExitCode", timeout_s)
    if stdout is None:
        return {}, problem
    wanted, ends = set(job_ids), {}
    oom_steps: dict[str, tuple[str, str]] = {}  # job id -> a step killed for memory
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        state, code = parts[1].strip(), parts[2].strip()
        if "." in parts[0]:
            if state.startswith("OUT_OF_MEMORY"):
                for jid in expand_job_id(parts[0].split(".")[0]):
                    oom_steps[jid] = (f"OUT_OF_MEMORY (step {parts[0].strip()})", code)
            continue
        if state.split()[0] not in END_KINDS:
            continue  # PENDING, RUNNING, REQUEUED, ...: not ended
        for jid in expand_job_id(parts[0]):
            if jid in wanted:
                ends[jid] = (state, code)
    # submitit runs the task as an srun step: the kernel kills the step at the job's --mem,
    # the step ends OUT_OF_MEMORY and the batch script after it FAILED. The step says why.
    for jid, (state, _) in list(ends.items()):
        if state.split()[0] == "FAILED" and jid in oom_steps:
            ends[jid] = oom_steps[jid]
    return ends, None


def tres_gpus(tres: str) -> int:
    """GPUs in a TRES string (sacct's AllocTRES): ``gres/gpu=2``; typed entries only
    (``gres/gpu:a100=2``) are summed when the untyped total is absent; 0 when none."""
    total, typed = None, 0
    for item in tres.split(","):
        key, _, value = item.strip().partition("=")
        if not value.isdigit():
            continue
        if key == "gres/gpu":
            total = int(value)
        elif key.startswith("gres/gpu:"):
            typed += int(value)
    return total if total is not None else typed


def parse_usage(text: str, wanted: set[str]) -> dict[str, tuple[float, int]]:
    """``JobID|ElapsedRaw|AllocTRES`` lines (``sacct -X -D -P``) into ``{job id: (seconds,
    GPUs)}`` for the ids in ``wanted``. A requeued job has one line per run (``-D``): their
    seconds add up (each run held its GPUs) and the GPUs are the most any run held."""
    usage: dict[str, tuple[float, int]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or "." in parts[0] or not parts[1].strip().isdigit():
            continue
        seconds, gpus = float(parts[1]), tres_gpus(parts[2])
        for jid in expand_job_id(parts[0].strip()):
            if jid in wanted:
                before_s, before_g = usage.get(jid, (0.0, 0))
                usage[jid] = (before_s + seconds, max(before_g, gpus))
    return usage


def job_usage(
    job_ids: list[str], timeout_s: float = CALL_TIMEOUT_S
) -> tuple[dict[str, tuple[float, int]], str | None]:
    """What accounting says each job used (one sacct call for all): ``{job id: (elapsed
    seconds over all its runs, allocated GPUs)}``, and a problem when sacct can't answer.
    A job still pending has 0 s; a running one its time so far."""
    if not job_ids:
        return {}, None
    # -D: every run of a requeued job, so that the time spent before a requeue counts too.
    stdout, problem = _sacct_rows(_bases(job_ids), "JobID,ElapsedRaw,AllocTRES", timeout_s, "-D")
    return ({}, problem) if stdout is None else (parse_usage(stdout, set(job_ids)), None)
