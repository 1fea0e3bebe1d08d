"""Time budgets, per-part records and the JSON that is always written.

Every part runs under its own :class:`Deadline`. Before the expensive bit of a measurement
the part projects its cost from a step it has already timed (:meth:`Deadline.check`) and
skips with the projection as its reason when that would overrun, so the whole script ends
inside ``--budget-s``. A hard stop (``SIGALRM``) a little past the budget is the backstop
for what a projection cannot see (a first step that is itself too long, a hung worker).
CUDA out-of-memory is a result, not a crash: the item says at how many GiB it happened.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Row

# ok: every item measured and every check met; partial: some items skipped (budget, OOM);
# skipped: nothing measured, with the reason; failed: a check not met; error: an exception.
STATUSES = ("ok", "partial", "skipped", "failed", "error")


class Overrun(Exception):
    """The projected cost of the next measurement is more than the part has left."""


class HardStop(Exception):
    """The part ran past its budget plus grace (SIGALRM): what it measured so far stays."""


class Deadline:
    """A part's wall-clock budget, started at construction."""

    def __init__(self, seconds: float, label: str) -> None:
        self.seconds, self.label = max(0.0, float(seconds)), label
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def require(self, what: str) -> None:
        """Raise :class:`Overrun` when nothing is left to start ``what`` with."""
        if self.left() <= 0:
            raise Overrun(
                f"{what}: no time left of the {self.label} budget of {self.seconds:.1f} s"
            )

    def check(self, projected_s: float, what: str) -> None:
        """Raise :class:`Overrun` when ``what`` (projected at ``projected_s``) won't fit."""
        if projected_s > self.left():
            raise Overrun(
                f"{what}: projected {projected_s:.1f} s, {max(0.0, self.left()):.1f} s left "
                f"of the {self.label} budget of {self.seconds:.1f} s"
            )


@contextlib.contextmanager
def hard_stop(seconds: float) -> Iterator[None]:
    """Raise :class:`HardStop` in this (main) thread after ``seconds``; no-op elsewhere."""
    main = threading.current_thread() is threading.main_thread()
    if seconds <= 0 or not main or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise HardStop(f"stopped at its hard limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Ctx:
    """What every part gets: the mode, the device, a scratch directory, and measurements a
    later part reuses (part 2 compares against part 1's BF16 steps without re-running them)."""

    tiny: bool
    device: Any  # torch.device
    tmp: Path
    steps: int | None = None  # --steps: timed steps (runs, epochs) instead of each default
    cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def timed(self, default: int) -> int:
        return self.steps or default

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class PartRecord:
    """One part of the check as the JSON holds it."""

    key: str
    number: int
    title: str
    status: str = "skipped"
    reason: str | None = None
    budget_s: float = 0.0
    elapsed_s: float = 0.0
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # items: {"item", "reason"}
    details: dict[str, Any] = field(default_factory=dict)

    def skip(self, item: str, reason: str) -> None:
        self.skipped.append({"item": item, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [asdict(r) for r in self.rows]
        return out


def free_memory() -> None:
    """Drop what the last measurement held, so the next peak is its own."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def oom_reason(exc: BaseException) -> str:
    """A CUDA OOM as a result: where the allocator stood when it ran out."""
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**30
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return f"CUDA out of memory at {peak:.1f} GiB allocated of {total:.1f} GiB ({first})"


@contextlib.contextmanager
def item(record: PartRecord, name: str) -> Iterator[None]:
    """Run one item of a part: an overrun or an OOM skips this item with its reason and the
    part goes on with the next one (a smaller model may still fit)."""
    import torch

    oom: str | None = None
    try:
        yield
    except Overrun as exc:
        record.skip(name, str(exc))
    except torch.cuda.OutOfMemoryError as exc:
        oom = oom_reason(exc)  # read before the frames that hold the tensors are dropped
    if oom is not None:
        record.skip(name, oom)
    free_memory()


def finish_status(record: PartRecord) -> None:
    """Derive a part's status from its rows, its skipped items and its checks."""
    if record.status == "error":
        return
    if any(r.met is False for r in record.rows):
        record.status = "failed"
    elif record.rows and record.skipped:
        record.status = "partial"
    elif record.rows:
        record.status = "ok"
    else:
        record.status = "skipped"
    if record.skipped and not record.reason:
        record.reason = "; ".join(
            s["reason"] if s["reason"].startswith(s["item"]) else f"{s['item']}: {s['reason']}"
            for s in record.skipped
        )


def run_part(
    record: PartRecord, body: Callable[[PartRecord, Deadline], None], grace_s: float
) -> None:
    """Run ``body`` within ``record.budget_s`` (hard stop at the budget plus ``grace_s``)."""
    import torch

    deadline = Deadline(record.budget_s, record.key)
    try:
        with hard_stop(record.budget_s + grace_s):
            body(record, deadline)
    except (Overrun, HardStop) as exc:
        record.skip("part", str(exc))
    except torch.cuda.OutOfMemoryError as exc:
        record.skip("part", oom_reason(exc))
    except Exception as exc:  # one broken part must not hide the others' figures
        import traceback

        traceback.print_exc()
        record.status, record.reason = "error", f"{type(exc).__name__}: {exc}"[:2000]
    free_memory()
    record.elapsed_s = deadline.elapsed()
    finish_status(record)


def write_atomic(path: Path, text: str) -> None:
    """Readers (and a kill mid-write) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out: Path, doc: dict[str, Any]) -> None:
    """``gpu-check.json`` and ``gpu-check.md`` in ``out``, after every part."""
    from bench.gpu.report import render_markdown

    write_atomic(out / "gpu-check.json", json.dumps(doc, indent=2, default=str) + "\n")
    write_atomic(out / "gpu-check.md", render_markdown(doc))
