"""The part of GPU-hours a job itself uses (so light that :mod:`runner.job` may import it:
only the ledger and the tracking helpers): the GPUs its executor gave it, its attempts' wall
time from the ledger, and the metric on its MLflow run. :mod:`runner.report.gpu_hours`
builds the matrix's figures (SLURM accounting, executor options) on top."""

from __future__ import annotations

import time
from collections.abc import Mapping

from runner.ledger import Attempt, CellRecord


def gpus_from_env(env: Mapping[str, str]) -> int | None:
    """The GPUs a job process may use, from what its executor set: ``CUDA_VISIBLE_DEVICES``
    (local, SLURM), else ``NVIDIA_VISIBLE_DEVICES`` (docker); None when neither says."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = env.get(var)
        if value is None:
            continue
        if value.strip().lower() in ("", "none", "void", "nodevfiles", "-1"):
            return 0
        if value.strip().lower() == "all":
            continue  # "all" of an unknown number: let the next source say
        return len([x for x in value.split(",") if x.strip() and x.strip() != "-1"])
    return None


def attempt_wall(attempt: Attempt, now: float) -> float:
    """The attempt's seconds from its start to its end (see the module doc)."""
    status = attempt.read("status") or {}
    started = status.get("started")
    if not isinstance(started, (int, float)):
        return 0.0  # never started: queued, submitted, or cancelled before it ran
    ended = status.get("ended")
    if not isinstance(ended, (int, float)):
        if status.get("state") == "running" and not attempt.read("monitor"):
            ended = now
        else:  # ended without a word: up to the last sign of life
            beat = attempt.read("heartbeat") or {}
            ended = max(
                (t for t in (beat.get("time"), status.get("time")) if isinstance(t, (int, float))),
                default=started,
            )
    return max(0.0, float(ended) - float(started))


def ledger_hours(
    record: CellRecord, gpus: int | None, now: float | None = None
) -> tuple[float, float]:
    """The cell's (GPU-hours, wall hours) over all its attempts from the ledger alone, each
    attempt's GPUs as its status.json says, else ``gpus`` (0 when None): what a job logs as
    it ends; ``runner report`` refines it (SLURM accounting, executor options)."""
    now = time.time() if now is None else now
    gpu_s = wall_s = 0.0
    for a in record.attempts():
        wall = attempt_wall(a, now)
        seen = (a.read("status") or {}).get("gpus")
        wall_s += wall
        gpu_s += wall * (seen if isinstance(seen, int) else (gpus or 0))
    return gpu_s / 3600, wall_s / 3600


def log_gpu_hours(uri: str, run_id: str, hours: float, wall_hours: float | None = None) -> None:
    """Set ``gpu_hours`` (and ``wall_hours``) on a cell's MLflow run: the latest value is the
    cell's total so far, so logging it again after a resume replaces it in the UI."""
    figures = {"gpu_hours": hours}
    if wall_hours is not None:
        figures["wall_hours"] = wall_hours
    log_figures(uri, run_id, figures)


def log_figures(uri: str, run_id: str, figures: Mapping[str, float]) -> None:
    """These metrics on a run at step 0, in one call."""
    from mlflow.entities import Metric

    from runner import tracking

    now_ms = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now_ms, 0) for key, value in figures.items()]
    tracking.client(uri).log_batch(run_id, metrics=metrics)
