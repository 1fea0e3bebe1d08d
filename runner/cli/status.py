"""``plan`` / ``status`` as a table, once or refreshed until no cell is in flight
(``status --watch``).

Watching on a terminal redraws one view in place (a bar per running cell, then the rows that
matter, then the counts); anywhere else it prints the status once, then one plain line per
state change and per epoch. Each refresh asks the executor once (SLURM: the one ``sacct``
call of ``runner.sweep.reconcile``). Ctrl-C or SIGTERM stops watching with exit 0 and no
traceback; a process started with SIGINT ignored (``cmd &``, nohup, some CI runners) can't
be interrupted by SIGINT, so SIGTERM (``kill PID``) is the way to stop it there.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from runner.cli.progress import LiveProgress, Rates, bars, is_live
from runner.cli.tables import BIG, status_view, summary
from runner.ledger import IN_FLIGHT, CellState
from runner.plan import Plan, make_plan
from runner.sweep.background import running_scheduler
from runner.sweep.reconcile import reconcile

Warn = Callable[[str], None]


def slurm_line(states: dict[str, CellState], warn: Warn) -> str | None:
    """What SLURM itself says of the matrix's jobs: one squeue and one sacct call in all."""
    from runner.executors.slurm.cluster import query_states

    ids = [s.job_id for s in states.values() if s.job_id and s.state in ("submitted", "running")]
    if not ids:
        return None
    slurm, warning = query_states(ids)
    if warning:
        warn(warning)
    counts = Counter(slurm.values())
    return "SLURM: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def view(
    plan: Plan,
    states: dict[str, CellState],
    width: int,
    show_all: bool,
    see_all: str,
    warn: Warn,
    slurm: bool = True,
    limit: int = BIG,
    by_axis: bool = True,
) -> list[RenderableType]:
    """The status: the cells (all, or above ``limit`` a summary and the rows that matter),
    the counts by state, and what else runs for the matrix (search, SLURM, scheduler)."""
    spec = plan.matrix.spec
    title = (
        f"{spec.name}: {len(plan.cells)} cells, recipe {spec.recipe}, executor {spec.executor.kind}"
    )
    out = status_view(
        title, plan.cells, states, width, show_all, limit, see_all, by_axis, plan.matrix.labels
    )
    out.append(Text(f"{len(plan.cells)} cells: {summary(states)}"))
    if plan.search is not None:
        out.append(Text(plan.search.describe()))
    if slurm and spec.executor.kind == "slurm" and (line := slurm_line(states, warn)):
        out.append(Text(line))
    if sched := running_scheduler(plan):
        out.append(Text(f"background scheduler: pid {sched['pid']}, log {sched['log']}"))
    return out


def show(console: Console, parts: list[RenderableType]) -> None:
    """Print a view. Lines of text are soft-wrapped: the terminal wraps a long one, nothing
    cuts it (an id or a run name stays whole), and 10,000 of them print in a blink."""
    for part in parts:
        console.print(part, soft_wrap=isinstance(part, Text))


class _Stop(Exception):
    """SIGTERM while watching."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises ``_Stop`` in this block, so that watching ends like Ctrl-C: the live
    display taken down, exit 0, no traceback. (Handlers can be set on the main thread only.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> Any:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _in_flight(plan: Plan, states: dict[str, CellState]) -> bool:
    """A cell queued, submitted, running or cancelling, or a background scheduler that may
    still claim cells."""
    return any(s.state in IN_FLIGHT for s in states.values()) or bool(running_scheduler(plan))


def watch(
    plan: Plan,
    matrix: Path,
    console: Console,
    interval: float,
    show_all: bool,
    see_all: str,
    warn: Warn,
) -> int:
    """Refresh every ``interval`` seconds until no cell is in flight, or until Ctrl-C or
    SIGTERM; exit 0 either way (the cells run on: watching never touches them)."""
    live = is_live(console)
    follow = LiveProgress(console, plan.cells, live=False)
    rates = Rates()
    display: Live | None = None
    states = plan.states()
    try:
        with _sigterm_stops():
            refresh = 0
            while True:
                if refresh:
                    time.sleep(interval)
                    if plan.search is not None:  # trials asked since: they are cells too
                        plan = make_plan(matrix, plan.workdir)
                        follow.cells = plan.cells
                    if warning := reconcile(plan):
                        warn(warning)
                    states = plan.states()
                going = _in_flight(plan, states)
                if live:
                    if display is None:
                        display = Live(console=console, auto_refresh=False)
                        display.start()
                    display.update(
                        _live_view(plan, states, console, rates, refresh, interval, warn),
                        refresh=True,
                    )
                elif refresh == 0:
                    show(console, view(plan, states, console.width, show_all, see_all, warn))
                    follow.prime(states)
                else:
                    follow(states)
                refresh += 1
                if not going:
                    break
    except (KeyboardInterrupt, _Stop):
        if display is not None:
            display.stop()
        console.print(
            "stopped watching; the cells run on (`runner status` shows them)", highlight=False
        )
        return 0
    if display is not None:
        display.stop()
    what = "no cell is in flight" if refresh > 1 else "no cell is in flight: nothing to watch"
    console.print(f"{what}; {len(plan.cells)} cells: {summary(states)}", highlight=False)
    return 0


def _live_view(
    plan: Plan,
    states: dict[str, CellState],
    console: Console,
    rates: Rates,
    refresh: int,
    interval: float,
    warn: Warn,
) -> RenderableType:
    """Bars of the running cells, then as many rows as the screen holds, then the counts."""
    now = time.time()
    for cid, s in states.items():
        rates.see(cid, s, now)
    names = {c.id: c.run_name for c in plan.cells}
    height = console.height
    running = sum(s.state in ("running", "cancelling") for s in states.values())
    bar_rows = min(running, max(1, height // 3))
    limit = max(3, height - bar_rows - 12)
    stamp = datetime.now().strftime("%H:%M:%S")
    head = Text(f"{stamp}  every {interval:g} s; Ctrl-C stops watching", style="dim")
    parts: list[RenderableType] = [head]
    if running:
        parts.append(bars(states, names, rates, bar_rows))
    # SLURM's own view once (one squeue + one sacct); later refreshes cost one sacct.
    parts += view(plan, states, console.width, False, "", warn, refresh == 0, limit, False)
    return Group(*parts)
