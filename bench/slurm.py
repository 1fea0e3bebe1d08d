"""SLURM scheduling: submitting N cells as job arrays against one ``sbatch`` per cell, and
``runner status``'s one-query state lookup against submitit's per-job state polling.

Needs a running cluster (``make slurm-up``); without one it says so and measures nothing.
Jobs are submitted held (``--hold``) and cancelled afterwards, so nothing runs: this times the
scheduler round trips, not training.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import Options, Outcome, Row
from bench.slurm_common import cancel_all, cluster_answers, no_cluster_row


def _noop() -> int:
    return 0


def run(opts: Options) -> Outcome:
    if not cluster_answers():
        return Outcome([no_cluster_row("SLURM: submit and status")])
    import submitit

    from runner.executors.slurm.backend import SlurmBackend
    from runner.executors.slurm.cluster import query_states
    from runner.executors.slurm.options import SlurmExecutorOptions

    n = 4 if opts.smoke else 200 if opts.quick else 1000
    options = SlurmExecutorOptions(
        kind="slurm", time_min=10, gpus_per_task=0, cpus_per_task=1, sbatch_extra={"hold": True}
    )
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        backend = SlurmBackend(options, Path(tmp) / "arrays")
        t = time.perf_counter()
        array_jobs = backend.submit_callables([_noop] * n)
        t_arrays = time.perf_counter() - t
        sbatch_arrays = len(backend.arrays)

        single = submitit.SlurmExecutor(folder=Path(tmp) / "single")
        single.update_parameters(time=10, cpus_per_task=1, additional_parameters={"hold": True})
        t = time.perf_counter()
        single_jobs = [single.submit(_noop) for _ in range(n)]
        t_single = time.perf_counter() - t

        ids = [j.job_id for j in array_jobs]
        t = time.perf_counter()
        states, warning = query_states(ids)
        t_query = time.perf_counter() - t
        # submitit's own way to learn each job's state: one forced lookup per job.
        polled = array_jobs[: max(1, n // 10)]
        t = time.perf_counter()
        for job in polled:
            job.watcher.get_state(job.job_id, mode="force")
        t_poll = (time.perf_counter() - t) * n / len(polled)
        cancel_all(ids + [j.job_id for j in single_jobs])

    rows = [
        Row(
            f"SLURM submit {n} cells: arrays vs one sbatch per cell",
            f"{t_arrays:.2f} s ({sbatch_arrays} sbatch)",
            f"{t_single:.2f} s ({n} sbatch)",
            f"{t_single / t_arrays:.0f}× faster",
            "fewer sbatch calls",
            sbatch_arrays < n,
            "held jobs, cancelled after",
            {"arrays_s": t_arrays, "single_s": t_single, "sbatch_calls": sbatch_arrays},
        ),
        Row(
            f"SLURM status of {n} cells: one query vs per-job polling",
            f"{t_query:.2f} s",
            f"{t_poll:.1f} s (projected from {len(polled)})",
            f"{t_poll / t_query:.0f}× faster",
            "—",
            None,
            warning or f"{len(states)} states in 1 squeue + 1 sacct",
            {"query_s": t_query, "poll_s_projected": t_poll},
        ),
    ]
    return Outcome(rows)
