"""Benchmark 4: cell start latency, process start to the end of the first training step.

A fresh ``python -m bench.startup_child`` runs the real cell payload (``runner.job.cell.CellJob``)
against a sqlite store and ledger prepared as ``runner sweep`` prepares them (experiment
created, attempt claimed), with the thread count the local executor would export. The
baseline is the floor of any PyTorch + MONAI script: interpreter start plus those imports.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import REPO, Options, Outcome, Row, fmt_s, recipe_overrides

# Any PyTorch + MONAI script pays these; monai's own __init__ imports mlflow.
FLOOR = ("interpreter start", "import torch", "import mlflow", "import monai")


def prepare(work: Path, cells: int) -> list[dict[str, Any]]:
    """What ``runner.sweep.submit.submit`` leaves for each of ``cells`` cells: one store and
    experiment for the sweep, then per cell a claimed attempt in the ledger."""
    from runner import tracking
    from runner.job.cell import CellJob
    from runner.ledger import Ledger
    from runner.matrix.cells import cell_id

    uri = f"sqlite:///{work / 'mlruns.db'}"
    exp = tracking.ensure_experiment(uri, "bench-start", work / "mlartifacts")
    ledger = Ledger(work / "sweeps", "bench-start")
    overrides = recipe_overrides()
    jobs = []
    for i in range(cells):
        cid = cell_id("segmentation", [*overrides, f"+bench_rep={i}"])  # distinct cells
        attempt = ledger.cell(cid).claim("local", 0)
        assert attempt is not None
        job = CellJob(
            matrix="bench-start",
            recipe="segmentation",
            cell_id=cid,
            run_name=f"bench-{i}",
            values={},
            overrides=overrides,
            cells_dir=str(ledger.cells_dir),
            attempt=attempt.number,
            tracking_uri=uri,
            experiment_id=exp,
            executor="local",
            workdir=str(work),
        )
        jobs.append(asdict(job))
    return jobs


def one_start(job: dict[str, Any], threads: int | None) -> list[tuple[str, float]]:
    env = dict(os.environ)
    if threads:  # what the local executor exports for each cell
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["BENCH_T0"] = repr(time.time())
    cmd = [sys.executable, "-m", "bench.startup_child", json.dumps(job)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in out.stdout.splitlines() if x.startswith("BENCH_MARKS ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"start-latency child failed:\n{out.stderr[-3000:]}")
    return [(str(a), float(b)) for a, b in json.loads(lines[-1][len("BENCH_MARKS ") :])]


def phases(marks: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds per label (intervals between consecutive marks, summed per label)."""
    out: dict[str, float] = defaultdict(float)
    for (_, a), (label, b) in itertools.pairwise(marks):
        out[label] += b - a
    return dict(out)


def run(opts: Options, threads: int | None = None) -> Outcome:
    reps = 1 if opts.quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        runs = [phases(one_start(job, threads)) for job in prepare(Path(tmp), reps)]
    # The breakdown of the run with the median total, so that its phases add up to it.
    totals = [sum(r.values()) for r in runs]
    mid = runs[totals.index(sorted(totals)[len(totals) // 2])]
    per_phase, labels = mid, list(mid)
    total = sum(mid.values())
    floor = sum(mid.get(k, 0.0) for k in FLOOR)
    table = ["| phase | seconds | share |", "|---|---:|---:|"]
    for k in sorted(labels, key=lambda k: -per_phase[k]):
        table.append(f"| {k} | {per_phase[k]:.2f} | {per_phase[k] / total:.0%} |")
    markdown = (
        f"**Cell start latency, where the time goes** (the median of {reps} fresh processes, "
        f"totals {', '.join(f'{t:.1f}' for t in totals)} s; phases in order of size):\n\n"
        + "\n".join(table)
    )
    row = Row(
        "Cell start: process start → first step done",
        fmt_s(total),
        fmt_s(floor),
        f"{total / floor:.2f}×",
        "— (info)",
        None,
        "baseline: python start + import torch + monai (which imports mlflow itself); "
        "breakdown below",
        {"total_s": total, "floor_s": floor, "phases_s": per_phase, "runs": runs},
    )
    return Outcome([row], {"phases_s": per_phase, "runs": runs}, markdown)
