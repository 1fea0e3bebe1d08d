"""Scheduling: the makespan of 12 cells of mixed lengths on 3 slots against the ideal
Σ durations / 3, through the runner's own queue (``runner.sweep.submit.submit``), the loop that
the local and docker executors share. Durations are each cell's measured run time (from the
ledger), so the ratio isolates scheduling: idle slots, start gaps, polling.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import Options, Outcome, Row


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


def run(opts: Options) -> Outcome:
    from recipes.components.data.demo_data import ensure_demo_dataset
    from runner.plan import make_plan
    from runner.sweep.submit import submit

    with tempfile.TemporaryDirectory(prefix="bench-makespan-") as tmp:
        root = Path(tmp)
        data = ensure_demo_dataset(root / "demo", cases=6, size=24, seed=0)
        n = 6 if opts.quick else 12
        include, base = mixed_cells(n, data)
        path = root / "m.yaml"
        path.write_text(
            f"name: makespan\nrecipe: segmentation\nbase: {base!r}\n"
            f"include: [{include}]\nexecutor: {{kind: local, slots: 3}}\n"
            f"tracking: {{uri: 'sqlite:///{root}/mlruns.db'}}\n"
            f"sweep_dir: {root}/sweeps\n"
        )
        old = os.getcwd()
        os.chdir(root)
        try:
            plan = make_plan(path, workdir=root)
            t = time.perf_counter()
            outcome = submit(plan)
            makespan = time.perf_counter() - t
        finally:
            os.chdir(old)
        durations = []
        for cell in plan.cells:
            status = plan.ledger.cell(cell.id).attempt(1).read("status") or {}
            durations.append(status["ended"] - status["started"])
    ideal = sum(durations) / 3
    row = Row(
        f"Makespan: {n} mixed cells on 3 slots (local queue)",
        f"{makespan:.1f} s",
        f"{ideal:.1f} s ideal (Σ run times / 3)",
        f"{makespan / ideal:.2f}×",
        "—",
        None,
        f"{len(outcome.submitted)} cells; run times {min(durations):.1f}-"
        f"{max(durations):.1f} s; the gap is process start (imports) and 1 s polling",
        {"makespan_s": makespan, "durations_s": durations},
    )
    return Outcome([row])
