"""Scheduling: the makespan of 12 cells of mixed lengths on 3 slots against the ideal, through
the runner's own queue (``runner.sweep.submit.submit``), the loop that the local and docker
executors share. Durations are each cell's measured run time (from the ledger: from the start
of its process's run, imports included, to its outcome); the ideal is those run times in the
queue's order with nothing between them (:func:`list_schedule`), so the ratio isolates
scheduling: idle slots, start gaps, polling. Σ durations / 3 is shown beside it: a bound no
queue of whole cells reaches. The store exists before the clock runs.

Twice in the same run: without a warm standby (each cell's process starts when its slot
frees), then with one (``executor.standby: true``: the next cell's process starts
and does its imports while the slots are busy, and runs at its go, runner.job.standby).
A standby's run starts at its go, so its imports are outside its duration: on a machine
whose cores are all busy they still compete with the running cells.

Where the rest goes, per cell (medians): ``start``, from entering its slot (its submission,
or a standby's go) to the start of its run (the controller's and the task's interpreters,
unpickling); ``tail``, from the end of its run to the queue seeing its process gone (closing
the MLflow run, interpreter exit, the queue's wake-up); ``handoff``, from there to the next
cell entering the freed slot.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Options, Outcome, Row

SLOTS = 3


def mixed_cells(n: int, data: Path) -> tuple[str, list[str]]:
    """The ``include`` list and ``base`` of ``n`` tiny cells of mixed lengths on ``data``."""
    # Mixed lengths: 1 to 4 epochs, in an order that a naive scheduler would pack badly.
    include = ", ".join(f"{{seed: {i}, training.max_epochs: {1 + (i * 5) % 4}}}" for i in range(n))
    base = [
        "data=demo",
        f"data.root={data}",
        "training.val_interval=1",
        "training.batch_size=1",
        "training.samples_per_volume=4",
        "training.patch_size=[16,16,16]",
        "training.num_threads=1",
        "model=unet",
        "model.size=tiny",
    ]
    return include, base


def sweep(
    root: Path, data: Path, n: int, standby: bool, name: str, slots: int = SLOTS
) -> dict[str, Any]:
    """Run ``n`` mixed cells on ``slots`` local slots (with a warm standby or without); the
    makespan and each cell's timeline."""
    import runner.executors.local.backend  # noqa: F401 - imported before the clock runs
    from runner import tracking
    from runner.plan import make_plan
    from runner.sweep import queue
    from runner.sweep.submit import submit

    include, base = mixed_cells(n, data)
    path = root / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nrecipe: segmentation\nbase: {base!r}\n"
        f"include: [{include}]\n"
        f"executor: {{kind: local, slots: {slots}, standby: {str(standby).lower()}}}\n"
        f"tracking: {{uri: 'sqlite:///{root}/mlruns.db'}}\n"
        f"sweep_dir: {root}/sweeps\n"
    )
    seen: dict[str, float] = {}  # cell id -> when the queue saw its job end
    check = queue._check_outcome

    def stamped(plan: Any, backend: Any, job: Any, sj: Any) -> None:
        seen[job.cell_id] = time.time()
        check(plan, backend, job, sj)

    old = os.getcwd()
    os.chdir(root)
    queue._check_outcome = stamped  # type: ignore[assignment]
    try:
        plan = make_plan(path, workdir=root)
        # The store and the experiment exist before the clock runs: creating them is the
        # sweep's one-off cost, not scheduling.
        tracking.ensure_experiment(plan.tracking_uri, name, root / "mlartifacts")
        t0, t = time.time(), time.perf_counter()
        outcome = submit(plan)
        makespan = time.perf_counter() - t
    finally:
        queue._check_outcome = check  # type: ignore[assignment]
        os.chdir(old)
    cells = []
    for cell in plan.cells:
        attempt = plan.ledger.cell(cell.id).attempt(1)
        status, job = attempt.read("status") or {}, attempt.read("job") or {}
        if status.get("state") != "done":
            raise RuntimeError(f"cell {cell.id} did not finish: {status or 'no status'}")
        result = plan.ledger.logs_dir / f"{job['job_id']}_0_result.pkl"
        go = attempt.read("go")  # a warm standby's: when its slot freed
        cells.append(
            {
                "submitted": job["time"] - t0,
                "slot": (go["time"] if go else job["time"]) - t0,
                "started": status["started"] - t0,
                "ended": status["ended"] - t0,
                "returned": result.stat().st_mtime - t0,  # the job's result written
                "freed": seen[cell.id] - t0,
            }
        )
    return {
        "makespan_s": makespan,
        "submitted": len(outcome.submitted),
        "slots": slots,
        "cells": cells,
    }


def breakdown(cells: list[dict[str, float]], slots: int) -> dict[str, float]:
    """Per-cell medians of the overheads (see the module's docstring); a cell enters its
    slot at its submission, or a warm standby at its go."""
    frees = sorted(c["freed"] for c in cells)
    later = sorted(c["slot"] for c in cells)[slots:]
    med = statistics.median
    return {
        "start_s": med([c["started"] - c["slot"] for c in cells]),
        "tail_s": med([c["freed"] - c["ended"] for c in cells]),
        "exit_s": med([c["freed"] - c["returned"] for c in cells]),
        "handoff_s": med([s - f for s, f in zip(later, frees, strict=False)] or [0.0]),
    }


def list_schedule(durations: list[float], slots: int) -> float:
    """The makespan of ``durations`` run in this order on ``slots`` slots with nothing between
    them: each cell goes to the slot that frees first. The ideal of a queue that runs cells in
    the matrix's order without knowing their lengths; Σ durations / slots is below it by what
    whole cells can't divide (6 cells of ~8 s on 3 slots: two rounds of the longest)."""
    ends = [0.0] * slots
    for d in durations:
        ends[ends.index(min(ends))] += d
    return max(ends)


def _row(label: str, result: dict[str, Any], n: int, runs: dict[str, Any] | None = None) -> Row:
    """``runs``: the sweep whose run times define the ideal (default: this one). A standby's
    run starts at its go, its imports before it, so its sweep is held to the fresh one's."""
    ordered = sorted((runs or result)["cells"], key=lambda c: c["submitted"])
    durations = [c["ended"] - c["started"] for c in ordered]
    slots = result["slots"]
    bound = sum(durations) / slots
    ideal = list_schedule(durations, slots)
    parts = breakdown(result["cells"], slots)
    makespan = result["makespan_s"]
    return Row(
        f"Makespan: {n} mixed cells on {slots} slots (local queue, {label})",
        f"{makespan:.1f} s",
        f"{ideal:.1f} s ideal (the run times in queue order, nothing between them)",
        f"{makespan / ideal:.2f}×",
        "≤ 1.1×",
        makespan / ideal <= 1.1,
        f"Σ run times / {slots} = {bound:.1f} s ({makespan / bound:.2f}×); "
        f"{result['submitted']} cells; run times {min(durations):.1f}-{max(durations):.1f} s; "
        f"per cell (medians): {parts['start_s']:.1f} s from entering its slot (submission, or "
        f"a standby's go) to its run's start, {parts['tail_s']:.1f} s from its run's end to "
        f"the slot seen free (of which {parts['exit_s']:.1f} s after the job returned: "
        f"interpreter exit, polling), {parts['handoff_s']:.1f} s from there to the next cell "
        "entering it",
        {
            "makespan_s": makespan,
            "ideal_s": ideal,
            "sum_over_slots_s": bound,
            "durations_s": durations,
            **parts,
            "cells": result["cells"],
        },
    )


def run(opts: Options) -> Outcome:
    from recipes.components.data.demo_data import ensure_demo_dataset

    n = 6 if opts.quick else 12
    with tempfile.TemporaryDirectory(prefix="bench-makespan-") as tmp:
        root = Path(tmp)
        data = ensure_demo_dataset(root / "demo", cases=6, size=24, seed=0)
        if opts.smoke:  # the standby's sweep only, 2 cells on 1 slot: the second waits warm
            warm = sweep(root, data, 2, True, "makespan-warm", slots=1)
            return Outcome([_row("warm standby", warm, 2)], {"warm_standby": warm})
        cold = sweep(root, data, n, False, "makespan-cold")
        warm = sweep(root, data, n, True, "makespan-warm")
    rows = [_row("no standby", cold, n), _row("warm standby", warm, n, runs=cold)]
    rows.append(
        Row(
            f"Makespan: {n} mixed cells on {SLOTS} slots, warm standby vs none",
            f"{warm['makespan_s']:.1f} s",
            f"{cold['makespan_s']:.1f} s",
            f"{warm['makespan_s'] / cold['makespan_s']:.2f}×",
            "< 1×",
            warm["makespan_s"] < cold["makespan_s"],
            "the same cells, one sweep after the other in this run",
            {"warm_s": warm["makespan_s"], "cold_s": cold["makespan_s"]},
        )
    )
    return Outcome(rows, {"no_standby": cold, "warm_standby": warm})
