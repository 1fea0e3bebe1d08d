"""GPU-hours: what each attempt of a cell cost, per cell and in total.

An attempt costs its wall time × the GPUs it held:

- SLURM attempts: accounting's ``ElapsedRaw`` (summed over the job's requeued runs,
  ``sacct -D``) × the GPUs in its ``AllocTRES`` (``gres/gpu``): what the cluster charged,
  asked in one ``sacct`` call for the whole matrix. When accounting can't answer, the ledger's
  figure below, and a warning says so.
- every other attempt (and SLURM without accounting): the ledger's ``started`` → ``ended``
  (status.json; a running attempt counts up to now, one that ended without a word up to its
  last heartbeat) × the GPUs the job saw (``gpus`` in status.json, written by the job from
  ``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES``), else the GPU docker.json names,
  else what the executor options give a cell (their ``cell_gpus``: SLURM ``gpus_per_task``
  × ``gpus_per_cell`` or the ``gres`` count; local and debug: one GPU per rank when this
  machine has any; docker: one per rank when its pool has GPUs).

A cell that ran without a GPU costs 0 GPU-hours: GPU-hours are what a GPU budget is charged,
and a CPU-hour is not one. Its wall hours are kept beside (``wall_hours``), so a CPU matrix
still shows what it took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from runner import tracking
from runner.executors.options import default_options
from runner.ledger import Attempt, CellState, Docker, Job, Status, attempt_wall
from runner.plan import Plan


@dataclass
class CellHours:
    cell_id: str
    state: str
    attempts: int = 0
    wall_s: float = 0.0  # over all attempts
    gpu_s: float = 0.0  # wall × GPUs, over all attempts
    gpus: int = 0  # the GPUs of its last attempt that ran
    units: int | None = None  # epochs (or steps) its last attempt completed, in all
    source: str = "ledger"  # "sacct" once SLURM accounting gave any attempt's figure

    @property
    def gpu_hours(self) -> float:
        return self.gpu_s / 3600

    @property
    def wall_hours(self) -> float:
        return self.wall_s / 3600

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(gpu_hours=self.gpu_hours, wall_hours=self.wall_hours)
        return out


#: What an executor's accounting says each job used: ``{job id: (elapsed seconds over all
#: its runs, allocated GPUs)}`` (SLURM's sacct), asked by the caller
#: (:func:`runner.sweep.reconcile.accounting`): the report reads the ledger and MLflow only.
Usage = dict[str, tuple[float, int]]


def _attempt_gpus(attempt: Attempt, kind: str | None, plan: Plan, here: list[int] | None) -> int:
    status = attempt.load(Status)
    if status is not None and isinstance(status.gpus, int):
        return status.gpus
    docker = attempt.load(Docker)
    if docker is not None:
        return len(docker.gpus or ([] if docker.gpu is None else [docker.gpu]))
    options = plan.matrix.spec.executor
    if kind is not None and kind != options.kind:
        try:
            options = default_options(kind)
        except Exception:  # a kind whose options need more than its name (docker: image)
            return 0
    return options.cell_gpus(here)


def cell_hours(
    plan: Plan,
    states: dict[str, CellState] | None = None,
    usage: Usage | None = None,
    now: float | None = None,
    here: list[int] | None = None,
) -> dict[str, CellHours]:
    """Every cell's hours (``usage``: the executors' accounting, :data:`Usage`; without it,
    the ledger's figures)."""
    states = plan.states() if states is None else states
    now = time.time() if now is None else now
    usage = usage or {}
    out = {}
    for cell in plan.cells:
        record = plan.ledger.cell(cell.id)
        hours = CellHours(cell.id, states[cell.id].state)
        for a in record.attempts():
            hours.attempts += 1
            job, status = a.load(Job) or Job(), a.load(Status) or Status(state="")
            kind = job.executor
            job_id = str(job.job_id or status.job_id or "")
            if kind == "slurm" and job_id in usage:
                wall, gpus = usage[job_id]
                hours.source = "sacct"
            else:
                wall = attempt_wall(a, now)
                gpus = _attempt_gpus(a, kind, plan, here) if wall > 0 else 0
            hours.wall_s += wall
            hours.gpu_s += wall * gpus
            if wall > 0:
                hours.gpus = gpus
            if isinstance(status.epochs, int):
                hours.units = status.epochs
        out[cell.id] = hours
    return out


def totals(hours: Mapping[str, CellHours]) -> dict[str, Any]:
    """The matrix's GPU-hours and wall hours, in all and by state (JSON-ready)."""
    by_state: dict[str, float] = {}
    for h in hours.values():
        if h.attempts:
            by_state[h.state] = by_state.get(h.state, 0.0) + h.gpu_hours
    return {
        "gpu_hours": sum(h.gpu_hours for h in hours.values()),
        "wall_hours": sum(h.wall_hours for h in hours.values()),
        "gpu_hours_by_state": dict(sorted(by_state.items(), key=lambda kv: -kv[1])),
        "sources": sorted({h.source for h in hours.values() if h.attempts}),
    }


def fmt_hours(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:,.1f}"


def summary_line(total: Mapping[str, Any]) -> str:
    """``GPU-hours: 12.4 (done 10.1, failed 2.3); wall 13.0 h``."""
    parts = ", ".join(f"{k} {fmt_hours(v)}" for k, v in total["gpu_hours_by_state"].items())
    return (
        f"GPU-hours: {fmt_hours(total['gpu_hours'])}"
        + (f" ({parts})" if parts else "")
        + f"; wall {fmt_hours(total['wall_hours'])} h"
        + (" (SLURM: from sacct)" if "sacct" in total.get("sources", []) else "")
    )


def log_all(plan: Plan, hours: Mapping[str, CellHours]) -> int:
    """Set a cell's hours on its MLflow run where they differ from what the run holds
    (``runner report``); the runs written. The job logs its own figure as it ends, the
    ledger's as the ledger keeps it (:func:`runner.ledger.ledger_hours`), so the
    report writes a better one only: SLURM accounting's, GPUs from the executor options for
    a job that could not tell, a running cell's so far, a job that died before it logged.
    An equal figure is never written again: each write is one more entry in the metric's
    history, and a report of a 1,000-cell matrix would add 2,000 of them every time."""
    client = tracking.client(plan.tracking_uri)
    n = 0
    for cid, h in hours.items():
        run_id = plan.ledger.cell(cid).run_id
        if not (run_id and h.attempts):
            continue
        held = client.get_run(run_id).data.metrics
        figures = {
            key: value
            for key, value in (("gpu_hours", h.gpu_hours), ("wall_hours", h.wall_hours))
            if key not in held or not _same(held[key], value)
        }
        if figures:
            tracking.log_figures(plan.tracking_uri, run_id, figures)
            n += 1
    return n


def _same(held: float, value: float) -> bool:
    # Equal up to a double's rounding: the store keeps the figure as a double, and the job
    # computes it from the very numbers the ledger holds.
    return math.isclose(held, value, rel_tol=1e-9, abs_tol=1e-12)
