"""The wall time and GPU-hours a cell's attempts took, from the ledger alone: what a job logs
as it ends; ``runner report`` refines it (SLURM accounting, executor options)."""

from __future__ import annotations

import time

from runner.ledger.records import Heartbeat, Monitor, Status
from runner.ledger.store import Attempt, CellRecord


def attempt_wall(attempt: Attempt, now: float) -> float:
    """The attempt's seconds from its start (status.json ``started``) to its end (``ended``; a
    running attempt up to ``now``, one that ended without a word up to its last sign of
    life); 0 for an attempt that never started."""
    status = attempt.load(Status)
    if status is None or not isinstance(status.started, (int, float)):
        return 0.0  # never started: queued, submitted, or cancelled before it ran
    ended = status.ended
    if not isinstance(ended, (int, float)):
        if status.state == "running" and not attempt.load(Monitor):
            ended = now
        else:  # ended without a word: up to the last sign of life
            beat = attempt.load(Heartbeat)
            ended = max(
                (t for t in (beat and beat.time, status.time) if isinstance(t, (int, float))),
                default=status.started,
            )
    return max(0.0, float(ended) - float(status.started))


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
        seen = (a.load(Status) or Status()).gpus
        wall_s += wall
        gpu_s += wall * (seen if isinstance(seen, int) else (gpus or 0))
    return gpu_s / 3600, wall_s / 3600
