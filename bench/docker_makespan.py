"""Scheduling in containers: the makespan of 12 cells of mixed lengths (1 to 4 epochs) on 3
slots with the docker executor (``cpu_slots: 3``, one container per cell), through the
runner's own queue (``runner.sweep.submit.submit(wait=True)``, what ``runner sweep --wait``
runs), against the ideal Σ durations / 3 of the same cells' own recorded run times.

Two reference points separate the causes of the gap: the ideal (perfect packing, no
overhead) and a zero-overhead simulation of the same greedy queue with the measured run
times (what the cells' order and lengths cost by themselves); the rest is per-cell overhead,
split at the container's exit (from the engine's event log): the cell's tail after its
measured run (closing its MLflow run, interpreter exit), then the queue's handoff (polling,
remove, create, start), then the cell's own start in the container.

Needs a Docker Engine with the local base image; one is started (as root) and stopped when
none answers (:mod:`bench.docker_common`), else the benchmark says why and measures nothing.
Run: ``.venv/bin/python -m bench --only docker_makespan``.
"""

from __future__ import annotations

import heapq
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Options, Outcome, Row
from bench.docker_common import BASE_IMAGE, ROOT, docker_engine, venv_mounts
from bench.makespan import mixed_cells

SLOTS = 3


def greedy_makespan(durations: list[float], slots: int) -> float:
    """The makespan of a FIFO queue onto ``slots`` with no overhead at all."""
    free = [0.0] * slots
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def handoffs(frees: list[float], submits: list[float], slots: int) -> list[float]:
    """Seconds from a slot coming free to the next container started in it: the k-th
    submission after the first ``slots`` fills the slot that came free k-th."""
    later = sorted(submits)[slots:]
    return [s - f for s, f in zip(later, sorted(frees), strict=False)]


def _container_exits(since: float) -> dict[str, float]:
    """Short container id -> when it exited, from the engine's event log (read after the
    sweep, so that nothing is added to the path being measured)."""
    from runner.executors.docker.backend import client

    events = client().events(
        since=int(since),
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "die", "label": "runner.matrix=docker_makespan"},
        decode=True,
    )
    return {e["id"][:12]: e["timeNano"] / 1e9 for e in events}


def run(opts: Options) -> Outcome:
    with docker_engine() as problem:
        if problem:
            print(f"docker_makespan: skipped: {problem}", file=sys.stderr)
            row = Row("Makespan in containers", "not measured", "-", "-", "-", None, problem)
            return Outcome([row], details={"skipped": problem})
        return _measure(opts)


def _matrix(root: Path, data: Path, n: int, slots: int = SLOTS) -> str:
    include, base = mixed_cells(n, data)
    mounts = ", ".join(f"{{source: '{m}'}}" for m in venv_mounts(data.parent))
    executor = (
        f"{{kind: docker, image: '{BASE_IMAGE}', gpus: [], cpu_slots: {slots}, "
        f"threads_per_cell: 1, python: '{sys.executable}', env: [PYTHONPATH], "
        f"mounts: [{mounts}]}}"
    )
    return (
        f"name: docker_makespan\nrecipe: segmentation\nbase: {base!r}\n"
        f"include: [{include}]\nexecutor: {executor}\n"
        f"tracking: {{uri: 'sqlite:///{root}/mlruns.db'}}\nsweep_dir: {root}/sweeps\n"
    )


def _measure(opts: Options) -> Outcome:
    from recipes.components.data.demo_data import ensure_demo_dataset
    from runner.plan import make_plan
    from runner.sweep.submit import submit

    # Smoke: 2 cells on 1 slot (one handoff), the same code paths.
    n, slots = (2, 1) if opts.smoke else (6 if opts.quick else 12, SLOTS)
    old_cwd, old_path = os.getcwd(), os.environ.get("PYTHONPATH")
    # The container imports this checkout through PYTHONPATH (the `env` allow-list).
    os.environ["PYTHONPATH"] = old_path or str(ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-docker-makespan-") as tmp:
        root = Path(tmp)
        data = ensure_demo_dataset(root / "demo", cases=6, size=24, seed=0)
        path = root / "m.yaml"
        path.write_text(_matrix(root, data, n, slots))
        os.chdir(root)
        try:
            plan = make_plan(path, workdir=root)
            since, t = time.time(), time.perf_counter()
            outcome = submit(plan, wait=True)
            makespan = time.perf_counter() - t
        finally:
            os.chdir(old_cwd)
            if old_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old_path
        exits = _container_exits(since)
        durations, starts, tails, frees, submits = [], [], [], [], []
        for cell in plan.cells:
            attempt = plan.ledger.cell(cell.id).attempt(1)
            status, job = attempt.read("status") or {}, attempt.read("job") or {}
            if status.get("state") != "done":
                raise RuntimeError(f"cell {cell.id} did not finish: {status or 'no status'}")
            durations.append(status["ended"] - status["started"])
            # job.json is written once the container runs: create + start come before it.
            starts.append(status["started"] - job["time"])
            # "ended" is taken before the cell closes its MLflow run and its interpreter
            # exits; the container's exit frees the slot.
            free = exits.get(job["job_id"], status["ended"])
            tails.append(free - status["ended"])
            frees.append(free)
            submits.append(job["time"])
    ideal = sum(durations) / slots
    greedy = greedy_makespan(durations, slots)
    gaps = handoffs(frees, submits, slots)
    med = statistics.median
    row = Row(
        f"Makespan: {n} mixed cells on {slots} slots in containers (docker queue)",
        f"{makespan:.1f} s",
        f"{ideal:.1f} s ideal (Σ run times / {slots})",
        f"{makespan / ideal:.2f}×",
        "—",
        None,
        f"{len(outcome.submitted)} cells; run times {min(durations):.1f}-{max(durations):.1f} s; "
        f"zero-overhead FIFO {greedy:.1f} s ({greedy / ideal:.2f}× ideal). Per cell, medians: "
        f"{med(tails):.1f} s from the end of its run to its container's exit (closing the MLflow "
        f"run, interpreter exit), {med(gaps):.1f} s from that exit to the next container "
        f"running in the slot (1 s polling, remove, create, start), {med(starts):.1f} s from "
        "there to the cell's start (submitit, unpickling)",
        {
            "makespan_s": makespan,
            "ideal_s": ideal,
            "greedy_s": greedy,
            "durations_s": durations,
            "run_end_to_exit_s": tails,
            "exit_to_next_container_s": gaps,
            "container_to_cell_start_s": starts,
        },
    )
    return Outcome([row])


if __name__ == "__main__":
    result = run(Options(quick="--quick" in sys.argv))
    for r in result.rows:
        print(f"{r.benchmark}: {r.measured} vs {r.baseline} ({r.ratio}); {r.note}")
