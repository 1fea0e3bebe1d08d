"""``runner profile``: train each distinct cell shape for a few steps where the cells would
run, and predict what the matrix costs before the GPU-days are spent.

A *shape* is what a step's cost and an epoch's length depend on, read from each cell's
composed config: the model (its whole config), the patch, batch and samples per volume, the
loader (workers, prefetch, persistence, pinned memory, multiprocessing context), precision,
gradient checkpointing and accumulation, the patch grid and the epoch cap, the data, the
loss. Cells that differ only in what does not change a step (seed, learning rate, optimizer,
schedule, max_epochs) share a profile: 60 trials of one model are profiled once.

One profile is a :class:`~runner.job.profile.ProfileJob` through the matrix's executor
backend (``--executor`` picks another): a local process, a SLURM job (all shapes at once, as
an array, each on its own allocation), a container. On the local, debug and docker
executors the shapes run one after another, so that no two profiles share the machine and
skew each other's figures. A shape's profile reports the recipe's figures (see
``recipes/segmentation/profile.py``); per cell of the shape the run's length (its own
``max_epochs`` / ``max_steps`` over the profiled epoch length) gives the run time and the
GPU-hours. Everything is kept in ``sweeps/<matrix>/profile/profiles.json`` (merged with
earlier profiles of other shapes), which ``runner plan``'s estimate reads ("profiled").
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runner.errors import RunnerError
from runner.executors.backends import make_backend
from runner.executors.docker.job import DockerCellJob
from runner.executors.slurm.job import SlurmCellJob
from runner.job.profile import PROFILE, PROGRESS, ProfileJob, ProfileMixin
from runner.ledger import read_json, write_json_atomic
from runner.matrix.cells import Cell
from runner.plan import Plan
from runner.recipe import Composer
from runner.report.estimate import PROFILED

POLL_S = 0.5
#: training keys a step's cost or an epoch's length depends on.
TRAINING_KEYS = (
    "patch_size",
    "batch_size",
    "samples_per_volume",
    "num_workers",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory",
    "multiprocessing_context",
    "amp",
    "grad_checkpointing",
    "accumulate_steps",
    "patch_stride",
    "steps_per_epoch",
    "device",
    "pos_fraction",
)


@dataclass
class SlurmProfileJob(ProfileMixin, SlurmCellJob):
    """A profile as a SLURM job (the cells' own partition, account, GPUs, memory)."""


@dataclass
class DockerProfileJob(ProfileMixin, DockerCellJob):
    """A profile in a container of the trainer image."""


JOB_CLASSES: dict[str, type[ProfileMixin]] = {
    "slurm": SlurmProfileJob,
    "docker": DockerProfileJob,
}


@dataclass
class Shape:
    id: str
    key: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    #: cell id -> (max_epochs, max_steps) of that cell
    lengths: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    @property
    def cell(self) -> Cell:
        """The cell whose config is profiled (the first of the shape)."""
        return self.cells[0]


def shape_key(cfg: Any) -> dict[str, Any]:
    """What a profile of ``cfg`` stands for (see the module doc)."""

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    tcfg = cfg.training
    return {
        "model": plain(cfg.model),
        "training": {k: plain(tcfg.get(k)) for k in TRAINING_KEYS},
        "data": plain(cfg.data),
        "dims": plain(cfg.get("dims")),
        "task": plain(cfg.get("task")),
        "loss": str(cfg.loss.name),
    }


def shapes(plan: Plan, cells: list[Cell]) -> list[Shape]:
    """The distinct shapes of ``cells``, in the cells' order."""
    base = list(plan.matrix.spec.base)
    found: dict[str, Shape] = {}
    with Composer(plan.recipe) as composer:
        for cell in cells:
            cfg = composer.compose([*base, *cell.overrides])
            if isinstance(cfg, Exception):
                raise RunnerError(f"cell {cell.id} ({cell.run_name}): {cfg}")
            key = shape_key(cfg)
            sid = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
            shape = found.setdefault(sid[:12], Shape(sid[:12], key))
            shape.cells.append(cell)
            steps = cfg.training.get("max_steps")
            shape.lengths[cell.id] = (int(cfg.training.max_epochs), steps)
    return list(found.values())


def predict(result: dict[str, Any], shape: Shape, gpus: int) -> dict[str, dict[str, Any]]:
    """Per cell of ``shape``: its steps, run time and GPU-hours from the profile's step time
    and epoch length (training steps only; validation is not counted)."""
    out: dict[str, dict[str, Any]] = {}
    step_s, per_epoch = result.get("step_s"), result.get("steps_per_epoch")
    for cell in shape.cells:
        entry: dict[str, Any] = {"run_name": cell.run_name}
        if result.get("status") == "ok" and step_s and per_epoch:
            max_epochs, max_steps = shape.lengths[cell.id]
            total = (
                max_epochs * per_epoch
                if max_steps is None
                else min(max_epochs * per_epoch, max_steps)
            )
            entry.update(
                total_steps=total,
                epochs=math.ceil(total / per_epoch),
                run_s=total * step_s,
                gpu_hours=total * step_s * gpus / 3600,
                gpus=gpus,
            )
        out[cell.id] = entry
    return out


def _job(plan: Plan, shape: Shape, steps: int, folder: Path) -> Any:
    spec = plan.matrix.spec
    job_class: Any = JOB_CLASSES.get(spec.executor.kind, ProfileJob)
    record = folder / shape.id
    attempt = 1 + len(list((record / "attempts").glob("*"))) if record.exists() else 1
    for name in (PROFILE, PROGRESS):  # never read an earlier profile's figures
        (record / name).unlink(missing_ok=True)
    return job_class(
        matrix=spec.name,
        recipe=spec.recipe,
        cell_id=shape.id,
        run_name=shape.cell.run_name,
        values=shape.cell.values,
        overrides=[*spec.base, *shape.cell.overrides],
        cells_dir=str(folder),
        attempt=attempt,
        tracking_uri=plan.tracking_uri,
        experiment_id="",
        executor=spec.executor.kind,
        workdir=str(plan.workdir),
        steps=steps,
    )


def _outcome(backend: Any, job: Any, record: Path) -> dict[str, Any]:
    """The profile's figures; for a job that ended without them (killed by the kernel, by
    SLURM or Docker for memory), how it ended and how far ``progress.json`` says it got."""
    result = read_json(record / PROFILE)
    if result is not None:
        return result
    reason = backend.end_reason(job)
    killed_for_memory = any(
        s in reason for s in ("OUT_OF_MEMORY", "OOMKilled", "for memory", "out of memory")
    )
    return {
        "status": "oom" if killed_for_memory else "failed",
        "message": reason[:600],
        "reached": read_json(record / PROGRESS),  # the figures after its last step, if any
    }


def run(
    plan: Plan, chosen: list[Shape], steps: int, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Profile ``chosen`` with the matrix's executor; the merged ``profiles.json``."""
    if steps < 1:
        raise RunnerError(f"--steps: give a number of steps >= 1, not {steps}")
    if plan.recipe.entry("PROFILE") is None:
        raise RunnerError(f"recipe {plan.recipe.name!r} has no PROFILE entry: it can't be profiled")
    spec = plan.matrix.spec
    root = plan.ledger.root / Path(PROFILED).parent
    folder = root / "shapes"
    backend = make_backend(spec.executor, root / "logs")
    backend.preflight()
    gpus = spec.executor.cell_gpus(None)
    jobs = [_job(plan, shape, steps, folder) for shape in chosen]
    results: dict[str, dict[str, Any]] = {}
    at_once = spec.executor.kind == "slurm"  # each job on its own allocation
    batches = [jobs] if at_once else [[j] for j in jobs]
    for batch in batches:
        submitted = backend.submit(batch)
        try:
            for job, sj in zip(batch, submitted, strict=True):
                say(f"profiling {job.cell_id} ({job.run_name}): {steps} steps, job {sj.job_id}")
            for job, sj in zip(batch, submitted, strict=True):
                while not backend.finished(sj):
                    time.sleep(POLL_S)
                results[job.cell_id] = _outcome(backend, sj, folder / job.cell_id)
                backend.release(sj)
        except BaseException:
            backend.kill([sj.job_id for sj in submitted])
            raise
    saved = read_json(plan.ledger.root / PROFILED) or {}
    merged = dict(saved.get("shapes") or {})
    for shape in chosen:
        result = results[shape.id]
        merged[shape.id] = {
            **result,
            "key": shape.key,
            "cell": shape.cell.id,
            "cells": predict(result, shape, gpus),
            "steps_asked": steps,
            "executor": spec.executor.kind,
        }
    out = {"matrix": spec.name, "time": time.time(), "shapes": merged}
    plan.ledger.root.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.ledger.root / PROFILED, out)
    return out
