"""A background scheduler: the runner-side queue of a sweep that does not wait.

Local processes and Docker GPUs have no cluster queue: the runner itself starts a cell
whenever a slot (a GPU) frees up. So that ``runner sweep`` can still return at once, it
hands its chosen cells to a detached process (``python -m runner.cli.background SPEC``: the
CLI's entry point, which prints progress; :func:`serve` here does the work) that:

1. claims each cell in the ledger under its *own* pid, so that if it dies before starting
   a cell, that cell reads as pending again and the next sweep takes it;
2. tells the sweep which cells it claimed (the ready file), then
3. keeps the slots busy until its queue is empty and every job has ended, recording jobs
   that end without an outcome (a killed container) as lost, exactly like a waiting sweep.

``runner cancel`` reaches it through the ledger (a cancelled queued cell is never started),
and ``runner status`` reads its ``scheduler.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.executors.backends import make_backend
from runner.ledger import pid_alive, read_json, write_json_atomic
from runner.plan import Plan, make_plan
from runner.sweep.queue import Observer, SweepOutcome, claim_jobs, run_queue

READY_TIMEOUT_S = 300.0


def scheduler_file(plan: Plan) -> Path:
    return plan.ledger.root / "scheduler.json"


def running_scheduler(plan: Plan) -> dict[str, Any] | None:
    """The background scheduler of this matrix that is still alive, if any."""
    info = read_json(scheduler_file(plan))
    if info and pid_alive(int(info.get("pid", 0))):
        return info
    return None


def hand_off(
    plan: Plan, attempts_seen: dict[str, int], outcome: SweepOutcome, refill: bool = False
) -> None:
    """Start the background scheduler for these cells and wait until it has claimed them.

    ``attempts_seen``: cell id → the attempts this sweep saw, so that the scheduler's
    claims race other sweeps exactly as this sweep's own would. ``refill``: a search's
    sweep; the scheduler asks new trials as slots free up and then chooses restarts."""
    log_dir = plan.ledger.root / "scheduler"
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = log_dir / f"{stamp}-{os.getpid()}.log"
    spec_file = log.with_suffix(".json")
    ready = log.with_suffix(".ready.json")
    write_json_atomic(
        spec_file,
        {
            "matrix": str(Path(plan.matrix.file).absolute()),
            "workdir": str(plan.workdir),
            "attempts_seen": attempts_seen,
            "experiment_id": outcome.experiment_id,
            "ready": str(ready),
            "refill": refill,
        },
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "runner.cli.background", str(spec_file)],
            cwd=plan.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the terminal and a Ctrl-C of the sweep
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (info := read_json(ready)) is None:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RunnerError(
                f"the background scheduler exited ({proc.returncode}) before claiming "
                f"any cell; its log {log} ends with:\n{tail}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise RunnerError(f"the background scheduler did not start in time; see {log}")
        time.sleep(0.1)
    outcome.submitted = list(info["claimed"])
    outcome.lost_race = list(info["lost_race"])
    outcome.scheduler = {"pid": proc.pid, "log": str(log)}


def serve(spec_file: Path, observer: Callable[[Plan], Observer], say: Callable[[str], None]) -> int:
    """The background scheduler's work (its process: :mod:`runner.cli.background`): claim
    the cells the sweep chose, say so, then keep the slots busy until every job has ended.
    ``observer``: what follows the queue for this plan (the progress lines of its log)."""
    spec = json.loads(spec_file.read_text())
    # The plan again (this is another process): the same validated matrix, cells and ledger.
    plan = make_plan(spec["matrix"], Path(spec["workdir"]))
    seen: dict[str, int] = spec["attempts_seen"]
    # Only the cells the sweep chose; claiming from the attempts it saw decides any race
    # with another sweep exactly as the sweep's own claim would.
    cells = [c for c in plan.cells if c.id in seen]
    outcome = SweepOutcome(experiment_id=spec["experiment_id"])
    backend = make_backend(plan.matrix.spec.executor, plan.ledger.logs_dir)
    jobs = claim_jobs(plan, cells, seen, spec["experiment_id"], outcome, backend.job_class)
    write_json_atomic(
        scheduler_file(plan),
        {"pid": os.getpid(), "started": time.time(), "log": str(spec_file.with_suffix(".log"))},
    )
    write_json_atomic(
        Path(spec["ready"]),
        {"claimed": [j.cell_id for j in jobs], "lost_race": outcome.lost_race},
    )
    say(f"background scheduler pid {os.getpid()}: {len(jobs)} cells")
    refill = None
    if spec.get("refill"):
        from runner.sweep.refill import make_refill

        refill = make_refill(plan, spec["experiment_id"], outcome, backend.job_class)
    run_queue(plan, backend, jobs, outcome, True, observer(plan), refill)
    say(f"queue empty, every job ended; submitted {len(outcome.submitted)} cells")
    return 0
