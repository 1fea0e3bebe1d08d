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
  else what the executor options give a cell (SLURM: ``gpus_per_task`` or the ``gres``
  count; local and debug: one GPU when this machine has any; docker: one when its pool has
  GPUs).

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
from runner.executors.resources import visible_gpus
from runner.ledger import Attempt, CellState
from runner.plan import Plan
from runner.report.gpu_meter import attempt_wall, gpus_from_env, log_figures, log_gpu_hours

__all__ = ["CellHours", "cell_hours", "gpus_from_env", "log_gpu_hours", "query_usage", "totals"]


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


def gres_gpus(gres: str) -> int:
    """GPUs in a ``--gres`` request: ``gpu:a100:2`` -> 2, ``gpu`` -> 1, ``shard:2`` -> 0."""
    total = 0
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def option_gpus(options: Any, here: list[int] | None = None) -> int:
    """GPUs the executor options give each cell. ``here``: this machine's GPUs (asked of
    nvidia-smi when None), for the executors that run cells on this machine."""
    kind = getattr(options, "kind", None)
    ranks = int(getattr(options, "gpus_per_cell", 1) or 1)  # a DDP cell's processes
    if kind == "slurm":  # --gres is per node; gpus_per_task per rank
        return gres_gpus(options.gres) if options.gres else int(options.gpus_per_task) * ranks

    def local() -> list[int]:
        return visible_gpus() if here is None else here

    if kind == "docker":
        gpus = local() if options.gpus == "all" else options.gpus
        return ranks if gpus else 0
    if kind == "local" and options.gpus is not None:
        return ranks if options.gpus else 0
    return ranks if local() else 0  # local with all visible GPUs, debug (cuda:0 if any)


def _attempt_gpus(attempt: Attempt, kind: str | None, plan: Plan, here: list[int] | None) -> int:
    status = attempt.read("status") or {}
    if isinstance(status.get("gpus"), int):
        return int(status["gpus"])
    docker = attempt.read("docker")
    if docker is not None:
        listed = docker.get("gpus") or ([] if docker.get("gpu") is None else [docker["gpu"]])
        return len(listed)
    options = plan.matrix.spec.executor
    if kind is not None and kind != options.kind:
        from runner.executors import options_model

        try:
            options = options_model(kind).model_validate({"kind": kind})
        except Exception:  # a kind whose options need more than its name (docker: image)
            return 0
    return option_gpus(options, here)


def slurm_jobs(plan: Plan) -> list[str]:
    """The SLURM job ids of every attempt of the matrix (for one sacct call)."""
    ids = []
    for cell in plan.cells:
        for a in plan.ledger.cell(cell.id).attempts():
            job = a.read("job") or {}
            if job.get("executor") == "slurm" and job.get("job_id"):
                ids.append(str(job["job_id"]))
    return ids


def query_usage(plan: Plan) -> tuple[dict[str, tuple[float, int]], str | None]:
    """SLURM accounting's usage of the matrix's jobs (one sacct call), and a warning."""
    ids = slurm_jobs(plan)
    if not ids:
        return {}, None
    from runner.executors.slurm.cluster import job_usage

    usage, problem = job_usage(ids)
    if problem:
        return usage, (
            f"GPU-hours of SLURM cells come from the ledger, not accounting ({problem}): "
            "requeued runs before the last are not counted"
        )
    return usage, None


def cell_hours(
    plan: Plan,
    states: dict[str, CellState] | None = None,
    usage: dict[str, tuple[float, int]] | None = None,
    now: float | None = None,
    here: list[int] | None = None,
) -> dict[str, CellHours]:
    """Every cell's hours (``usage``: :func:`query_usage`'s; None asks nothing of SLURM)."""
    states = plan.states() if states is None else states
    now = time.time() if now is None else now
    usage = usage or {}
    out = {}
    for cell in plan.cells:
        record = plan.ledger.cell(cell.id)
        hours = CellHours(cell.id, states[cell.id].state)
        for a in record.attempts():
            hours.attempts += 1
            job, status = a.read("job") or {}, a.read("status") or {}
            kind = job.get("executor")
            job_id = str(job.get("job_id") or status.get("job_id") or "")
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
            if isinstance(status.get("epochs"), int):
                hours.units = status["epochs"]
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
    ledger's as the ledger keeps it (:func:`runner.report.gpu_meter.ledger_hours`), so the
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
            log_figures(plan.tracking_uri, run_id, figures)
            n += 1
    return n


def _same(held: float, value: float) -> bool:
    # Equal up to a double's rounding: the store keeps the figure as a double, and the job
    # computes it from the very numbers the ledger holds.
    return math.isclose(held, value, rel_tol=1e-9, abs_tol=1e-12)
