"""``runner logs MATRIX CELL [--attempt N] [-f]``: a cell's job log, what it printed.

Every executor writes a job's output where submitit does, under ``<sweep_dir>/<matrix>/logs``:
``<job id>_<task>_log.out`` (the training lines, one per epoch or logging window) and
``..._log.err`` (warnings, a failure's traceback). A DDP cell has one pair per rank.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from runner.errors import RunnerError
from runner.ledger import IN_FLIGHT, CellState, Job
from runner.plan import Plan
from runner.sweep.selection import by_ids

#: How often ``--follow`` looks for more output.
FOLLOW_S = 0.5


def log_files(plan: Plan, cell_id: str, attempt: int | None = None) -> list[Path]:
    """The log files of a cell's attempt (default: its last), stdout before stderr per task."""
    record = plan.ledger.cell(cell_id)
    attempts = record.attempts()
    if not attempts:
        raise RunnerError(f"cell {cell_id} never ran: it has no log yet")
    numbers = [a.number for a in attempts]
    number = numbers[-1] if attempt is None else attempt
    if number not in numbers:
        raise RunnerError(
            f"cell {cell_id} has no attempt {number}; its attempts: {', '.join(map(str, numbers))}"
        )
    job = record.attempt(number).load(Job)
    if job is None or not job.job_id:
        raise RunnerError(f"attempt {number} of cell {cell_id} was never submitted: no log")
    tasks = sorted(plan.ledger.logs_dir.glob(f"{job.job_id}_*_log.out"))
    return [p for out in tasks for p in (out, out.with_name(out.name[: -len(".out")] + ".err"))]


def show(plan: Plan, cell_text: str, attempt: int | None, follow: bool, out: TextIO) -> int:
    (cell,) = by_ids(plan.cells, [cell_text])
    files = log_files(plan, cell.id, attempt)
    if not files:
        raise RunnerError(
            f"cell {cell.id} ({cell.run_name}): no log file under {plan.ledger.logs_dir} yet "
            "(a queued job has not started)"
        )
    offsets = {}
    for path in files:
        out.write(f"==> {path} <==\n")
        text = path.read_text(errors="replace") if path.exists() else ""
        out.write(text if text.endswith("\n") or not text else text + "\n")
        offsets[path] = len(text.encode())
    out.flush()
    while follow and plan.ledger.cell(cell.id).state().state in IN_FLIGHT:
        time.sleep(FOLLOW_S)
        for path in files:
            if path.exists() and path.stat().st_size > offsets[path]:
                with path.open("rb") as f:
                    f.seek(offsets[path])
                    chunk = f.read()
                offsets[path] += len(chunk)
                out.write(chunk.decode(errors="replace"))
                out.flush()
    return 0


def main(plan: Plan, cell: str, attempt: int | None, follow: bool) -> int:
    return show(plan, cell, attempt, follow, sys.stdout)


def failed_lines(plan: Plan, states: dict[str, CellState], limit: int = 10) -> list[str]:
    """A line per failed (or diverged) cell: its reason, its log, the command that shows it."""
    failed = [c for c in plan.cells if states[c.id].state in ("failed", "diverged")]
    lines = []
    for cell in failed[:limit]:
        state = states[cell.id]
        try:
            files = log_files(plan, cell.id)
        except RunnerError:
            files = []
        err = next((p for p in files if p.name.endswith(".err") and p.exists()), None)
        lines.append(
            f"  {cell.run_name or cell.id}: {state.reason or state.state}"
            + (f"\n    log: {err}" if err else "")
            + f"\n    runner logs {plan.matrix.file} {cell.id}"
        )
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (runner status --all)")
    return lines
