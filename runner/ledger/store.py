"""Durable per-cell state: what was submitted, what ran, how it ended.

Layout, under ``<sweep_dir>/<matrix name>/cells/<cell id>/``::

    cell.json                     the cell (values, overrides, run name)
    run_id                        the MLflow run every attempt logs into
    run_name                      its name, when the template has {started} (set once)
    checkpoints/                  the recipe's checkpoints (resume continues from here)
    attempts/0001/claim.json      who claimed attempt 1 (created by mkdir: one winner)
    attempts/0001/job.json        executor and job id, written by the submitter
    attempts/0001/status.json     running / done / failed / diverged, written by the job
    attempts/0001/heartbeat.json  progress, rewritten by the job while it runs
    attempts/0001/monitor.json    how the executor saw it end, written by the watcher
    attempts/0001/cancel.json     a cancellation request, written by ``runner cancel``

Why files and not a database: the ledger must live on the cluster's shared filesystem
(NFS), where SQLite locking is unsafe. Each file has exactly one writer and is replaced
atomically (write to a temp file, fsync, rename), so a kill -9 leaves either the old or
the new content; the only contended step, claiming an attempt, is a ``mkdir`` that exactly
one process can win, also on NFS.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.ledger.records import (
    Cancel,
    Claim,
    Heartbeat,
    Job,
    Monitor,
    R,
    Record,
    Remedy,
    Status,
)
from runner.ledger.run_name import RunNameRecord, read_recorded, record_once

#: ``pruned``: stopped at a rung by the pruner (runner.matrix.asha); a verdict, like done,
#: that only ``resume --only pruned`` reverses.
TERMINAL = ("done", "pruned", "failed", "diverged", "cancelled")
#: Claimed or submitted, or running (``cancelling``: asked to stop, and a process of it may
#: still run): a sweep submits none of these again and ``resume`` leaves them alone.
IN_FLIGHT = ("queued", "submitted", "running", "cancelling")
#: A running cell on another host whose heartbeat is older than this is presumed lost.
LOST_AFTER_S = 600.0
#: The job rewrites its heartbeat every HEARTBEAT_S (10 s, runner/job_process.py); a
#: cancelled cell on another host (a container, a SLURM node) whose heartbeat is older than
#: this has stopped.
STOPPED_AFTER_S = 35.0
STATES = ("pending", *IN_FLIGHT, *TERMINAL)


@contextlib.contextmanager
def json_beside(path: Path, data: dict[str, Any]) -> Iterator[Path]:
    """``data`` written complete and synced to a temp file in ``path``'s folder, for the
    caller to move onto ``path`` (a rename replaces, a hard link never does); whatever is
    left of it afterwards is removed, so a failed or refused move leaves no stray file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data``: a kill -9 leaves the old content or the new."""
    with json_beside(path, data) as tmp:
        os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class CellLike(Protocol):
    """What the ledger keeps of a cell (runner.matrix.cells.Cell is one)."""

    id: str
    run_name: str
    values: dict[str, Any]
    overrides: tuple[str, ...]
    origin: Any


@dataclass
class Attempt:
    number: int
    dir: Path

    def load(self, kind: type[R]) -> R | None:
        """This attempt's record of that kind (:mod:`runner.ledger.records`), if written."""
        data = read_json(self.dir / f"{kind.FILE}.json")
        return None if data is None else kind.from_json(data)

    def save(self, record: Record) -> None:
        """Replace the record's file atomically (each file has one writer: see records)."""
        write_json_atomic(self.dir / f"{record.FILE}.json", record.to_json())

    def read(self, name: str) -> dict[str, Any] | None:
        """A file as raw JSON, for tools and tests that inspect the ledger (the runner reads
        through :meth:`load`)."""
        return read_json(self.dir / f"{name}.json")

    def write(self, name: str, data: dict[str, Any]) -> None:
        """A file written raw, for tests that set up a ledger by hand (the runner writes
        through :meth:`save`)."""
        write_json_atomic(self.dir / f"{name}.json", data)


@dataclass
class CellState:
    """The folded view of a cell's files: what ``status`` shows and ``sweep`` decides on."""

    id: str
    state: str
    attempts: int = 0
    run_id: str | None = None
    reason: str | None = None
    job_id: str | None = None
    best_val_dice: float | None = None
    #: The recipe's selection metric, its direction and the best value (Status's).
    select_metric: str | None = None
    select_mode: str | None = None
    best_metric: float | None = None
    #: The best value of the search metric (a searched or pruned matrix's cells).
    objective: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    updated: float | None = None
    #: The out-of-memory remedies its latest attempt runs with (runner.sweep.remedies).
    remedy: list[str] = field(default_factory=list)

    def take_outcome(self, status: Status) -> None:
        """The scores of a job's status: best val Dice, the selection, the objective."""
        self.best_val_dice, self.objective = status.best_val_dice, status.objective
        self.select_metric, self.select_mode = status.select_metric, status.select_mode
        self.best_metric = status.best_metric

    def selected(self) -> tuple[str, str, float | None]:
        """(metric, max | min, best value) this cell was selected by: its recipe's
        ``training.select``, or val Dice (max) for a recipe that does not say."""
        metric = self.select_metric or "val_dice"
        mode = self.select_mode if self.select_mode in ("max", "min") else "max"
        value = self.best_metric
        if value is None and metric == "val_dice":
            value = self.best_val_dice
        return metric, mode, value


class CellRecord(RunNameRecord):
    """One cell's directory in the ledger."""

    def __init__(self, root: Path, cell_id: str) -> None:
        self.id = cell_id
        self.dir = root / cell_id
        self.attempts_dir = self.dir / "attempts"
        self.checkpoint_dir = self.dir / "checkpoints"

    def write_cell(self, cell: CellLike, recipe: str, base: list[str]) -> None:
        data = {
            "id": cell.id,
            "run_name": cell.run_name,
            "values": cell.values,
            "overrides": list(cell.overrides),
            "recipe": recipe,
            "base": base,
            "origin": cell.origin,
        }
        if read_json(self.dir / "cell.json") != json.loads(json.dumps(data, default=str)):
            write_json_atomic(self.dir / "cell.json", data)

    def attempts(self) -> list[Attempt]:
        if not self.attempts_dir.is_dir():
            return []
        nums = sorted(int(p.name) for p in self.attempts_dir.iterdir() if p.name.isdigit())
        return [Attempt(n, self.attempts_dir / f"{n:04d}") for n in nums]

    def attempt(self, number: int) -> Attempt:
        return Attempt(number, self.attempts_dir / f"{number:04d}")

    def claim(self, executor: str, seen_attempts: int) -> Attempt | None:
        """Claim attempt ``seen_attempts + 1``: the one after those the caller decided on.

        None when another process claimed it first. Numbering from what the caller saw, not
        from a fresh listing, is what makes two racing sweeps agree on a single winner.
        """
        attempt = self.attempt(seen_attempts + 1)
        self.attempts_dir.mkdir(parents=True, exist_ok=True)
        try:
            attempt.dir.mkdir()
        except FileExistsError:
            return None
        attempt.save(
            Claim(host=socket.gethostname(), pid=os.getpid(), time=time.time(), executor=executor)
        )
        return attempt

    def release(self, attempt: Attempt) -> bool:
        """Give back an attempt that was claimed but never submitted (an interrupted sweep
        dropped it): the cell reads pending again, with no attempt to show for it. An
        attempt with anything more than its claim is kept; returns whether it went."""
        if not attempt.dir.is_dir() or [p.name for p in attempt.dir.iterdir()] != ["claim.json"]:
            return False
        (attempt.dir / "claim.json").unlink()
        attempt.dir.rmdir()
        return True

    @property
    def run_id(self) -> str | None:
        return read_recorded(self.dir / "run_id")

    def set_run_id(self, run_id: str) -> str:
        """Record the MLflow run id once; return the id that won if one was already there."""
        return record_once(self.dir / "run_id", run_id)

    def state(self) -> CellState:
        attempts = self.attempts()
        if not attempts:
            return CellState(self.id, "pending", run_id=self.run_id)
        last = attempts[-1]
        claim, job, status = last.load(Claim), last.load(Job), last.load(Status)
        latest, monitor = last.load(Heartbeat), last.load(Monitor)
        beat = latest or Heartbeat()
        out = CellState(
            self.id,
            "queued",
            attempts=len(attempts),
            run_id=self.run_id,
            job_id=job.job_id if job else None,
            progress=beat.progress,
            updated=next((r.time for r in (status, latest, job, claim) if r), None),
            remedy=list((last.load(Remedy) or Remedy()).steps),
        )
        if status:
            out.state = status.state
            out.reason = status.reason
            out.take_outcome(status)
        elif job:
            out.state = "pending" if _never_started(claim, job) else "submitted"
        elif claim and _dead_here(claim.host, claim.pid):
            # Claimed by a sweep that died before submitting: it never ran, so it is pending.
            out.state = "pending"
        if out.state in TERMINAL:
            return out
        cancel = last.load(Cancel)
        if cancel:
            # Never "cancelled" while a process of the cell may still run: `runner cancel`
            # marks the request stopped once the job is gone; until then the job's own pid
            # (here) or heartbeat (elsewhere) says whether it still runs.
            stopping = out.state == "running" and not cancel.stopped
            if stopping and status and status.host == socket.gethostname():
                stopping = not _dead_here(status.host, status.pid)
            elif stopping:
                stopping = time.time() - _last_sign(beat, status) < STOPPED_AFTER_S
            out.state, out.reason = ("cancelling" if stopping else "cancelled"), "cancelled"
        elif monitor:
            # How the watcher (a sweep) or the executor (runner.sweep.reconcile) saw it end.
            out.state, out.reason = monitor.state, monitor.reason
        elif out.state == "running" and status and _dead_here(status.host, status.pid):
            final = last.load(Status) or status
            if final.state in TERMINAL:
                # It wrote its outcome and exited between our two looks: not lost. (Calling
                # it lost would let `resume` run a finished cell again.)
                out.state, out.reason = final.state, final.reason
                out.take_outcome(final)
            else:
                out.state, out.reason = "failed", "lost: the job's process is gone"
        elif out.state == "running" and time.time() - _last_sign(beat, status) > LOST_AFTER_S:
            out.state, out.reason = "failed", "lost: no heartbeat for over 10 minutes"
        return out

    def history(self) -> list[dict[str, Any]]:
        """Every attempt: job id, host, start, end, state, reason, checkpoint used."""
        rows = []
        for a in self.attempts():
            job, status = a.load(Job) or Job(), a.load(Status) or Status(state="")
            monitor = a.load(Monitor)
            rows.append(
                {
                    "attempt": a.number,
                    "executor": job.executor,
                    "job_id": job.job_id or status.job_id,
                    "host": status.host,
                    "started": status.started,
                    "ended": status.ended,
                    "state": status.state or None,
                    "reason": status.reason or (monitor.reason if monitor else None),
                    "resumed_from_epoch": status.resumed_from_epoch,
                    "remedy": list((a.load(Remedy) or Remedy()).steps),
                }
            )
        return rows


def _never_started(claim: Claim | None, job: Job) -> bool:
    """A local job that wrote no status, whose process and whose queue are gone: it never
    started its cell (a warm standby whose queue ended first, runner.job.standby), so the
    cell is pending again, as a claimed cell whose sweep died before submitting it is. (A
    queue that sees a job end without a word records it lost: the monitor then decides.)"""
    pid = job.job_id or ""
    return (
        job.executor == "local"
        and claim is not None
        and pid.isdigit()
        and _dead_here(claim.host, claim.pid)
        and _dead_here(claim.host, int(pid))
    )


def _dead_here(host: str | None, pid: int | None) -> bool:
    """True when ``pid`` names a process on this host (``host``) that is gone."""
    return host == socket.gethostname() and bool(pid) and not pid_alive(int(pid or 0))


class Ledger:
    """All cells of one matrix."""

    def __init__(self, sweep_dir: Path | str, matrix_name: str) -> None:
        self.root = Path(sweep_dir).absolute() / matrix_name
        self.cells_dir = self.root / "cells"
        self.logs_dir = self.root / "logs"

    def cell(self, cell_id: str) -> CellRecord:
        return CellRecord(self.cells_dir, cell_id)

    def states(self, cell_ids: list[str]) -> dict[str, CellState]:
        # Only cells with a directory have a history: the others (all of a matrix that
        # never ran: 10,000 of them) are pending without touching the disk per cell.
        known = set(self.known_ids())
        return {
            cid: self.cell(cid).state() if cid in known else CellState(cid, "pending")
            for cid in cell_ids
        }

    def known_ids(self) -> Iterator[str]:
        # Only a missing directory means "no cell ran yet": a sweep_dir that is a file, a
        # name too long or unreadable raises (OSError), for the plan to name sweep_dir.
        try:
            with os.scandir(self.cells_dir) as entries:
                names = [e.name for e in entries if e.is_dir()]
        except FileNotFoundError:
            return
        yield from sorted(names)


def _last_sign(beat: Heartbeat, status: Status | None) -> float:
    """When a running cell last showed life: its heartbeat, or (before its first heartbeat)
    the time it wrote ``running``, so that a cell just started never reads as lost."""
    return float(beat.time or (status.time if status else 0) or 0)
