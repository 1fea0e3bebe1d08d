"""Benchmark 4: cell start latency, process start to the end of the first training step; and
from a warm standby's go (:mod:`runner.job.standby`) to the same point.

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
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.common import REPO, WAITING, Options, Outcome, Row, fmt_s, recipe_overrides

# Any PyTorch + MONAI script pays these; monai's own __init__ imports mlflow.
FLOOR = ("interpreter start", "import torch", "import mlflow", "import monai")


def prepare(work: Path, cells: int, smoke: bool = False) -> list[dict[str, Any]]:
    """What ``runner.sweep.submit.submit`` leaves for each of ``cells`` cells: one store and
    experiment for the sweep, then per cell a claimed attempt in the ledger."""
    from runner import tracking
    from runner.job.cell import CellJob
    from runner.ledger import Ledger
    from runner.matrix.cells import cell_id

    uri = f"sqlite:///{work / 'mlruns.db'}"
    exp = tracking.ensure_experiment(uri, "bench-start", work / "mlartifacts")
    ledger = Ledger(work / "sweeps", "bench-start")
    overrides = recipe_overrides(smoke=smoke)
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
        # The constructor's fields only: the job's per-start state (its stop request) is
        # made afresh in the child.
        jobs.append({f.name: getattr(job, f.name) for f in fields(job) if f.init})
    return jobs


def one_start(job: dict[str, Any], threads: int | None) -> list[tuple[str, float]]:
    """A fresh child's marks; a standby job (``job["standby"]``) gets its go once it says it
    is ready, and its marks then end with the go's own (``("go", time)`` first)."""
    env = dict(os.environ)
    if threads:  # what the local executor exports for each cell
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["BENCH_T0"] = repr(time.time())
    cmd = [sys.executable, "-m", "bench.startup_child", json.dumps(job)]
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        go: list[tuple[str, float]] = []
        if job.get("standby"):
            assert child.stdout is not None
            for line in child.stdout:
                if line.startswith("BENCH_READY"):
                    go = [("go", _give_go(job))]
                    break
        out, err = child.communicate(timeout=600)
    lines = [x for x in out.splitlines() if x.startswith("BENCH_MARKS ")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"start-latency child failed:\n{err[-3000:]}")
    return go + [(str(a), float(b)) for a, b in json.loads(lines[-1][len("BENCH_MARKS ") :])]


def _give_go(job: dict[str, Any]) -> float:
    """What the queue does when a slot frees: the standby's go (no GPU here), its time."""
    from runner.ledger import CellRecord, Go

    now = time.time()
    attempt = CellRecord(Path(job["cells_dir"]), job["cell_id"]).attempt(job["attempt"])
    attempt.save(Go(gpus=[], threads=None, time=now))
    return now


def phases(marks: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds per label (intervals between consecutive marks, summed per label)."""
    out: dict[str, float] = defaultdict(float)
    for (_, a), (label, b) in itertools.pairwise(marks):
        out[label] += b - a
    return dict(out)


def after_go(marks: list[tuple[str, float]]) -> dict[str, float]:
    """A standby's phases from its go on: noticing it, then what the cell did to its step."""
    t_go = marks[0][1]
    seen = next(i for i, (label, _) in enumerate(marks) if label == WAITING)
    return {"noticing the go (polling)": marks[seen][1] - t_go, **phases(marks[seen:])}


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The breakdown of the run with the median total, so that its phases add up to it."""
    totals = [sum(r.values()) for r in runs]
    return runs[totals.index(sorted(totals)[len(totals) // 2])]


def _table(per_phase: dict[str, float]) -> str:
    total = sum(per_phase.values())
    table = ["| phase | seconds | share |", "|---|---:|---:|"]
    for k in sorted(per_phase, key=lambda k: -per_phase[k]):
        table.append(f"| {k} | {per_phase[k]:.2f} | {per_phase[k] / total:.0%} |")
    return "\n".join(table)


def run(opts: Options, threads: int | None = None) -> Outcome:
    reps = 1 if opts.quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        jobs = prepare(Path(tmp), 2 * reps, smoke=opts.smoke)
        cold = [phases(one_start(job, threads)) for job in jobs[:reps]]
        warm = [after_go(one_start({**job, "standby": True}, threads)) for job in jobs[reps:]]
    mid, mid_warm = _median_run(cold), _median_run(warm)
    total, total_warm = sum(mid.values()), sum(mid_warm.values())
    floor = sum(mid.get(k, 0.0) for k in FLOOR)
    totals = ", ".join(f"{sum(r.values()):.1f}" for r in cold)
    markdown = (
        f"**Cell start latency, where the time goes** (the median of {reps} fresh processes, "
        f"totals {totals} s; phases in order of size):\n\n{_table(mid)}\n\n"
        f"**The same from a warm standby's go** (runner.job.standby: its process started "
        f"and warmed up before its slot freed; median of {reps}):\n\n{_table(mid_warm)}"
    )
    rows = [
        Row(
            "Cell start: process start → first step done",
            fmt_s(total),
            fmt_s(floor),
            f"{total / floor:.2f}×",
            "— (info)",
            None,
            "baseline: python start + import torch + monai (which imports mlflow itself); "
            "breakdown below",
            {"total_s": total, "floor_s": floor, "phases_s": mid, "runs": cold},
        ),
        Row(
            "Cell start from a warm standby: go → first step done",
            fmt_s(total_warm),
            fmt_s(total),
            f"{total_warm / total:.2f}×",
            "— (info)",
            None,
            "baseline: the fresh process's start (row above); what a freed slot waits for "
            "its next cell with the local executor's standby (breakdown below)",
            {"total_s": total_warm, "phases_s": mid_warm, "runs": warm},
        ),
    ]
    return Outcome(rows, {"phases_s": mid, "runs": cold, "warm_phases_s": mid_warm}, markdown)
