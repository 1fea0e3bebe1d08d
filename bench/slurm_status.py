"""``runner status`` with reconciliation, for a 1,000-cell SLURM matrix: how long it takes
against status without reconciliation (measured in the same run), and how many ``squeue`` and
``sacct`` calls it makes (a PATH shim logs every call, then runs the real binary).

Needs a running cluster (``make slurm-up``); without one it says so and measures nothing.
The matrix is submitted by ``runner sweep`` as held arrays (``sbatch --hold``), so nothing
trains; its cells' setup is ``exit 3``. One task in 20 is then released: it dies at once
(what a broken environment does), and reconciliation writes those ends into the ledger; the
rest stay pending. Everything is cancelled afterwards. (Held tasks cancelled while pending
never reach this cluster's accounting, so releasing is how tasks end here.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.common import Options, Outcome, Row, fmt_s, interleave, median
from bench.slurm_common import cancel_all, cluster_answers, no_cluster_row

SHIMMED = ("squeue", "sacct")


def _shim(folder: Path, log: Path) -> None:
    """``squeue``/``sacct`` scripts that log their name, then exec the real binary."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHIMMED:
        real = shutil.which(name)
        script = folder / name
        script.write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec "{real}" "$@"\n')
        script.chmod(0o755)


@contextlib.contextmanager
def _counting(folder: Path, log: Path) -> Iterator[None]:
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{folder}{os.pathsep}{path}"
    try:
        yield
    finally:
        os.environ["PATH"] = path


def _calls(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _matrix(work: Path, n: int) -> Path:
    from recipes.components.data.demo_data import ensure_demo_dataset

    data = ensure_demo_dataset(work / "data", cases=6, size=24, seed=0)
    path = work / "status1k.yaml"
    spec = {
        "name": "status1k",
        "recipe": "segmentation",
        "base": [f"data.root={data}", "training.max_epochs=1", "model=meshnet"],
        "axes": {"seed": list(range(n))},
        "executor": {
            "kind": "slurm",
            "cpus_per_task": 1,
            "gpus_per_task": 0,
            "time_min": 5,
            "setup": ["exit 3"],
            "sbatch_extra": {"hold": True},
        },
        "sweep_dir": str(work / "sweeps"),
    }
    path.write_text(json.dumps(spec))
    return path


def _status(path: Path, reconcile: bool) -> None:
    """``runner status PATH`` in this process, its table thrown away; without
    reconciliation when ``reconcile`` is false (the status of before #12)."""
    import runner.sweep.reconcile as rec
    from runner.cli import main

    real = rec.reconcile
    with contextlib.ExitStack() as stack:
        if not reconcile:
            stack.callback(setattr, rec, "reconcile", real)
            rec.reconcile = lambda plan, states=None: None  # type: ignore[assignment]
            # runner.cli.status imported the name itself
            import runner.cli.status as st

            stack.callback(setattr, st, "reconcile", st.reconcile)
            st.reconcile = rec.reconcile  # type: ignore[assignment]
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        assert main(["status", str(path)]) == 0


def run(opts: Options) -> Outcome:
    if not cluster_answers():
        return Outcome([no_cluster_row("SLURM status with reconciliation")])
    from runner.cli import main
    from runner.plan import make_plan

    n = 4 if opts.smoke else 200 if opts.quick else 1000
    repeats = 1 if opts.smoke else 3
    with tempfile.TemporaryDirectory(prefix="bench-slurm-status-") as tmp:
        work = Path(tmp)
        path = _matrix(work, n)
        old = Path.cwd()
        os.chdir(work)
        ids: list[str] = []
        try:
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["sweep", "--no-wait", str(path)]) == 0
            t_submit = time.perf_counter() - t
            plan = make_plan(path, work)
            ids = [str(s.job_id) for s in plan.states().values() if s.job_id]
            arrays = sorted({i.split("_")[0] for i in ids})
            log, shims = work / "calls.log", work / "shims"
            _shim(shims, log)
            with _counting(shims, log):
                # 1. all pending (held): reconciliation asks, finds nothing ended.
                log.unlink(missing_ok=True)
                _status(path, reconcile=True)
                calls_open = _calls(log)
                t_with, t_without = interleave(
                    lambda: _status(path, True), lambda: _status(path, False), repeats
                )
                # 2. one in 20 released: they fail at once, reconciliation writes their ends.
                ended = ids[::20]
                subprocess.run(
                    ["scontrol", "release", *(f"{b}_[{_ranges(b, ended)}]" for b in arrays)],
                    check=False,
                    timeout=60,
                )
                all_ended = _wait_ended(ended)
                log.unlink(missing_ok=True)
                t = time.perf_counter()
                _status(path, reconcile=True)
                t_writes = time.perf_counter() - t
                calls_writes = _calls(log)
            counts = Counter(s.state for s in make_plan(path, work).states().values())
        finally:
            os.chdir(old)
            cancel_all(ids)
    one_each = all(c == Counter({"squeue": 1, "sacct": 1}) for c in (calls_open, calls_writes))
    calls = ", ".join(f"{calls_open[k]} {k}" for k in SHIMMED)
    ratio = median(t_with) / median(t_without)
    rows = [
        Row(
            f"SLURM status of {n} pending cells: with reconciliation vs without",
            f"{fmt_s(median(t_with))} ({calls})",
            f"{fmt_s(median(t_without))}",
            f"{ratio:.2f}×",
            "1 squeue + 1 sacct",
            one_each,
            f"{len(arrays)} array(s), held; submitted in {t_submit:.1f} s; median of {repeats}",
            {
                "with_s": t_with,
                "without_s": t_without,
                "calls_open": dict(calls_open),
                "calls_writing": dict(calls_writes),
                "submit_s": t_submit,
            },
        ),
        Row(
            f"SLURM status reconciling {len(ended)} failed of {n}",
            f"{fmt_s(t_writes)} ({', '.join(f'{calls_writes[k]} {k}' for k in SHIMMED)})",
            f"{fmt_s(median(t_without))}",
            f"{t_writes / median(t_without):.2f}×",
            "1 squeue + 1 sacct",
            one_each and all_ended and counts.get("failed") == len(ended),
            f"ledger after: {dict(counts)}" + ("" if all_ended else "; not all ended in time"),
            {"writing_s": t_writes, "states": dict(counts)},
        ),
    ]
    return Outcome(rows)


def _ranges(base: str, ids: list[str]) -> str:
    return ",".join(i.split("_")[1] for i in ids if i.split("_")[0] == base)


def _wait_ended(ids: list[str], timeout_s: float = 300) -> bool:
    """Until accounting lists every one of ``ids`` as ended (sacct lags the controller);
    False when it did not within ``timeout_s``."""
    from runner.executors.slurm.cluster import job_ends

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ends, _ = job_ends(ids)
        if len(ends) == len(ids):
            return True
        time.sleep(2)
    return False
