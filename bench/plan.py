"""Benchmark 1: expanding + validating a 10,000-cell matrix, against Hydra's per-job cost.

The runner composes one config per distinct combination of config-group choices and checks
every cell's keys against it; Hydra's multirun composes (and sets up) every job. Both are
timed on the same axes; Hydra on a subset, since its cost is linear in jobs.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Options, Outcome, Row, fmt_s, median

GROUPS = {
    "model": ["segresnet", "unet", "basic_unet"],
    "optimizer": ["adamw", "sgd"],
    "loss": ["dice_ce", "dice"],
}
LRS = [0.0001, 0.0003, 0.001, 0.003, 0.01]
PLAN_SEEDS = 167  # 3 * 2 * 2 * 5 * 167 = 10,020 cells
BASE = ["data=demo"]


def matrix_yaml(seeds: int) -> str:
    lines = ["name: bench-plan", "recipe: segmentation", f"base: {BASE}", "axes:"]
    lines += [f"  {k}: [{', '.join(v)}]" for k, v in GROUPS.items()]
    lines += [f"  optimizer.lr: {LRS}", f"  seed: {list(range(seeds))}"]
    return "\n".join(lines) + "\n"


def time_plan(path: Path) -> tuple[float, int]:
    from runner.matrix.load import load_matrix
    from runner.matrix.validate import validate_matrix

    start = time.perf_counter()
    _, expansion = validate_matrix(load_matrix(path))
    return time.perf_counter() - start, len(expansion.cells)


def cli_plan(path: Path, workdir: Path) -> float:
    """``runner plan --json`` in a fresh process (imports, validation, ledger, output), as a
    user runs it; the table output's own rendering is left out."""
    cmd = [sys.executable, "-m", "runner", "plan", "--json", "-o", str(workdir / "plan.json")]
    start = time.perf_counter()
    out = subprocess.run(
        [*cmd, str(path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"runner plan failed:\n{out.stderr[-3000:]}")
    return wall


def cold_cli(path: Path, work: Path, reps: int) -> dict[str, Any]:
    """Fresh-process plans of a matrix that never ran (every composition), then of one whose
    sweep directory exists (``status`` during a sweep: validated once, remembered)."""
    first = [cli_plan(path, work) for _ in range(max(1, reps))]
    (work / "sweeps" / "bench-plan").mkdir(parents=True)
    cli_plan(path, work)  # validates and records
    again = [cli_plan(path, work) for _ in range(max(1, reps))]
    return {"first_s": median(first), "remembered_s": median(again), "runs": [first, again]}


def hydra_multirun(lrs: int, seeds: int, workdir: Path) -> dict[str, Any]:
    """Hydra's BasicLauncher over the same axes (first ``lrs`` lrs, ``seeds`` seeds) in a
    fresh process."""
    sweep = [f"{k}={','.join(v)}" for k, v in GROUPS.items()]
    sweep += [f"optimizer.lr={','.join(map(str, LRS[:lrs]))}", f"seed=range(0,{seeds})"]
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("hydra_app.py")),
        "--multirun",
        f"hydra.sweep.dir={workdir / 'multirun'}",
        *BASE,
        *sweep,
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"hydra multirun failed:\n{out.stderr[-3000:]}")
    stamps = [float(x.split()[1]) for x in out.stdout.splitlines() if x.startswith("BENCH_JOB")]
    # Consecutive task stamps: everything Hydra does per job (compose, output dir, the
    # job's .hydra/*.yaml, logging set-up); the interpreter start and imports drop out.
    per_job = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {"jobs": len(stamps), "wall_s": wall, "per_job_s": per_job}


def hydra_compose_per_cell(path: Path, limit: int) -> float:
    """A stricter baseline: Hydra's compose API alone, once per cell, in this process."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.matrix.expand import expand
    from runner.matrix.load import load_matrix
    from runner.recipe import Recipe

    m = load_matrix(path)
    recipe = Recipe.load("segmentation")
    cells = expand(m, set(recipe.groups)).cells[:limit]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(recipe.config_dir), version_base="1.3"):
        compose(config_name=recipe.config_name, overrides=[*BASE, *cells[0].overrides])
        start = time.perf_counter()
        for cell in cells:
            compose(config_name=recipe.config_name, overrides=[*BASE, *cell.overrides])
        return (time.perf_counter() - start) / len(cells)


def run(opts: Options) -> Outcome:
    # Hydra's cost is linear in jobs (and steady), so a subset measures it: 24 or 60 jobs
    # (smoke: 12).
    hydra_lrs = 1 if opts.smoke else 2 if opts.quick else 5
    reps = 0 if opts.quick else 2  # quick: the first call only
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        work = Path(tmp)
        path = work / "matrix.yaml"
        path.write_text(matrix_yaml(2 if opts.smoke else PLAN_SEEDS))
        # The first call also pays for imports (pydantic, Hydra) and Hydra's start-up.
        cold, cells = time_plan(path)
        warm = [time_plan(path)[0] for _ in range(reps)] or [cold]
        hydra = hydra_multirun(hydra_lrs, 1, work)
        compose_s = hydra_compose_per_cell(path, 3 if opts.smoke else 10 if opts.quick else 30)
        cli = cold_cli(path, work, 1 if opts.quick else 3)
    wall = median(warm)
    per_cell = wall / cells
    speedup = hydra["per_job_s"] / per_cell
    # The runner composes once per distinct group choice (+ once for the base): that fixed
    # part, not the per-cell checks, dominates a plan.
    composes = math.prod(len(v) for v in GROUPS.values()) + 1
    first = (
        f"median of {reps} after a first call of {fmt_s(cold)} (imports included)"
        if reps
        else "first call in the process (imports included)"
    )
    rows = [
        Row(
            f"Plan: expand + validate {cells:,} cells",
            fmt_s(wall),
            "—",
            "—",
            "≤ 2 s",
            wall <= 2.0,
            f"{first}; its {composes} Hydra compositions ≈ {fmt_s(composes * compose_s)}",
            {
                "wall_s": wall,
                "cold_s": cold,
                "runs_s": warm,
                "cells": cells,
                "hydra_compositions": composes,
                "compositions_est_s": composes * compose_s,
            },
        ),
        Row(
            f"CLI plan of {cells:,} cells, fresh process, never ran",
            fmt_s(cli["first_s"]),
            "—",
            "—",
            "≤ 2 s",
            cli["first_s"] <= 2.0,
            f"`runner plan --json`, {composes} Hydra compositions, imports included",
            cli,
        ),
        Row(
            f"CLI status of {cells:,} cells, fresh process, validated before",
            fmt_s(cli["remembered_s"]),
            fmt_s(cli["first_s"]),
            f"{cli['first_s'] / cli['remembered_s']:,.1f}× faster",
            "≤ 2 s",
            cli["remembered_s"] <= 2.0,
            "the validation record in the sweep directory: no composition",
            cli,
        ),
        Row(
            "Plan per cell vs Hydra multirun per job",
            fmt_s(per_cell),
            fmt_s(hydra["per_job_s"]),
            f"{speedup:,.0f}× faster",
            "≥ 100× faster",
            speedup >= 100,
            f"Hydra BasicLauncher, {hydra['jobs']} jobs, no-op task, fresh process",
            {"runner_per_cell_s": per_cell, "hydra": hydra, "speedup": speedup},
        ),
        Row(
            "Plan per cell vs Hydra compose() per cell",
            fmt_s(per_cell),
            fmt_s(compose_s),
            f"{compose_s / per_cell:,.0f}× faster",
            "— (info)",
            None,
            "compose API alone, no launcher, same process",
            {"compose_per_cell_s": compose_s, "speedup": compose_s / per_cell},
        ),
    ]
    return Outcome(rows, {"cells": cells, "hydra": hydra, "compose_per_cell_s": compose_s})
