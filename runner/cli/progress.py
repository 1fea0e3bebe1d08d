"""Following a sweep's cells: a live display on a terminal, plain lines elsewhere.

On a terminal (``LiveProgress`` with a console that is one), a rich ``Live`` display holds
one bar per running cell (run name, epoch/max_epochs or step, seconds per epoch or it/s,
ETA, last train loss, GPU memory when the recipe reports it) and a line of counts by
state; a cell that finishes leaves one plain line above it. Anywhere else (pipes, CI logs,
nohup, the background scheduler's log) it prints one plain line per state change and per
epoch, with no ANSI codes and no carriage returns, so that logs stay greppable.

Rates come from the heartbeats (``heartbeat.json``, rewritten by the job on every
``ctx.progress`` call, i.e. after every epoch): the seconds between the epochs seen while
following, else the recipe's own ``epoch_seconds``.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.cli.tables import STATE_STYLE, dice, duration, epoch_text, eta_s, summary
from runner.ledger import TERMINAL, CellState
from runner.matrix.cells import Cell

BAR_WIDTH = 24


def is_live(console: Console) -> bool:
    """A terminal that can redraw (not TERM=dumb): the live display; otherwise plain lines."""
    return console.is_terminal and not console.is_dumb_terminal


class Rates:
    """Seconds per epoch (or per reported step) of each running cell, from the epochs it
    reported while watched: (epochs since the first seen) / (time since then)."""

    def __init__(self) -> None:
        # cell id -> (attempt, epoch, when seen) of the first and of the latest new epoch
        self._first: dict[str, tuple[int, float, float]] = {}
        self._last: dict[str, tuple[int, float, float]] = {}

    def see(self, cid: str, state: CellState, now: float) -> None:
        epoch = state.progress.get("epoch")
        if state.state != "running" or not isinstance(epoch, (int, float)):
            return
        first = self._first.get(cid)
        if first is None or first[0] != state.attempts or epoch < first[1]:
            # A new attempt (a resume) or an epoch count that went back: start over.
            self._first[cid] = self._last[cid] = (state.attempts, epoch, now)
        elif epoch != self._last[cid][1]:
            self._last[cid] = (state.attempts, epoch, now)

    def s_per_epoch(self, cid: str) -> float | None:
        first, last = self._first.get(cid), self._last.get(cid)
        if first is None or last is None or last[1] <= first[1]:
            return None
        return (last[2] - first[2]) / (last[1] - first[1])

    def spent(self, cid: str, now: float) -> float:
        """Seconds since the cell's latest epoch ended; 0 when its end was not seen (the
        first epoch seen may have ended long before)."""
        first, last = self._first.get(cid), self._last.get(cid)
        if first is None or last is None or last == first:
            return 0.0
        return now - last[2]


def _num(p: dict[str, Any], key: str) -> float | None:
    value = p.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def bar_row(name: str, state: CellState, rates: Rates, now: float) -> list[RenderableType]:
    """run name, bar, epoch/max, rate, ETA, loss, GPU memory: one running cell."""
    p, cid = state.progress, state.id
    epoch, total = _num(p, "epoch"), _num(p, "max_epochs")
    if epoch is None or not total:
        return [Text(name, no_wrap=True), ProgressBar(None, width=BAR_WIDTH), "starting", "", ""]
    done = epoch
    batch, batches = _num(p, "batch"), _num(p, "batches")
    if batch is not None and batches:  # a recipe that reports within its epochs
        done += min(batch, batches) / batches
    step = "step" in p
    where = f"{'step ' if step else ''}{p['epoch']}/{p['max_epochs']}"
    if batch is not None and batches:
        where += f" ({int(batch)}/{int(batches)})"
    spe = rates.s_per_epoch(cid)
    rate = spe if spe is not None else _num(p, "epoch_seconds")
    speed = ""
    if rate:
        speed = f"{1 / rate:.2f} it/s" if step else f"{duration(rate)}/epoch"
    if (samples := _num(p, "samples_per_s")) is not None:
        speed += f" {samples:.1f} samples/s"
    left = eta_s(p, spe, rates.spent(cid, now))
    extra = []
    if (loss := _num(p, "train_loss")) is not None:
        extra.append(f"loss {loss:.3f}")
    if (gpu := _num(p, "gpu_peak_mem_gb")) is not None:
        extra.append(f"GPU {gpu:.1f} GiB")
    return [
        Text(name, no_wrap=True),
        ProgressBar(total, done, width=BAR_WIDTH),
        where,
        speed.strip(),
        f"ETA {duration(left)}" if left is not None else "",
        " ".join(extra),
    ]


def bars(
    states: dict[str, CellState], names: dict[str, str], rates: Rates, rows: int
) -> RenderableType:
    """One bar per running cell (at most ``rows``; the rest counted)."""
    now = time.time()
    running = [s for s in states.values() if s.state in ("running", "cancelling")]
    grid = Table.grid(padding=(0, 1))
    for _ in range(6):
        grid.add_column()
    for s in running[:rows]:
        grid.add_row(*bar_row(names.get(s.id, s.id), s, rates, now))
    if len(running) > rows:
        grid.add_row(Text(f"... and {len(running) - rows} more running", style="dim"))
    return grid


def plain_line(name: str, state: CellState, states: dict[str, CellState], detail: str) -> str:
    style = STATE_STYLE.get(state.state, "default")
    return f"{escape(name):<40} [{style}]{state.state:<9}[/] {escape(detail)}  ({summary(states)})"


class LiveProgress:
    """The sweep's follow-up, called with every cell's state on each poll: a live display
    on a terminal, one plain line per state change and per epoch elsewhere. Use it as a
    context manager so that the live display is taken down however the sweep ends."""

    def __init__(self, console: Console, cells: list[Cell], live: bool | None = None) -> None:
        self.console = console
        self.cells = cells  # the plan's own list: a search adds trials to it as it goes
        self.names = {c.id: c.run_name for c in cells}
        self.seen: dict[str, tuple[str, Any]] = {}
        self.start = time.monotonic()
        self.rates = Rates()
        self.live = is_live(console) if live is None else live
        self._display: Live | None = None

    def __enter__(self) -> LiveProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None

    def prime(self, states: dict[str, CellState]) -> None:
        """Take these states as already told: only later changes print a line."""
        for cid, s in states.items():
            self.seen[cid] = (s.state, s.progress.get("epoch"))
            self.rates.see(cid, s, time.time())

    def __call__(self, states: dict[str, CellState]) -> None:
        if len(self.names) != len(self.cells):
            self.names = {c.id: c.run_name for c in self.cells}
        if self.live and not self.seen:
            # Cells that ended before this sweep are in the status table, not news.
            self.prime({cid: s for cid, s in states.items() if s.state in TERMINAL})
        now = time.time()
        for cid, s in states.items():
            self.rates.see(cid, s, now)
            key = (s.state, s.progress.get("epoch"))
            if self.seen.get(cid) == key:
                continue
            self.seen[cid] = key
            if s.state == "pending" or (self.live and s.state not in TERMINAL):
                continue
            self._say(cid, s, states)
        if self.live:
            self._redraw(states)

    def _say(self, cid: str, s: CellState, states: dict[str, CellState]) -> None:
        detail = epoch_text(s, self.rates.s_per_epoch(cid), self.rates.spent(cid, time.time()))
        if not detail:
            detail = (
                f"best val Dice {dice(s.best_val_dice)}"
                if s.best_val_dice is not None
                else (s.reason or "")
            )
        elapsed = time.monotonic() - self.start
        line = plain_line(self.names.get(cid, cid), s, states, detail)
        # highlight=False: numbers in a log line are not syntax; soft_wrap: a long line is
        # the terminal's to wrap, never cut.
        self.console.print(f"[{elapsed:6.0f}s] {line}", highlight=False, soft_wrap=True)

    def _redraw(self, states: dict[str, CellState]) -> None:
        elapsed = duration(time.monotonic() - self.start)
        view = Group(
            bars(states, self.names, self.rates, max(1, self.console.height - 3)),
            Text(f"[{elapsed}] {summary(states)}", style="bold"),
        )
        if self._display is None:
            # transient: the bars go when the sweep ends; the finished cells' lines stay.
            self._display = Live(view, console=self.console, auto_refresh=False, transient=True)
            self._display.start()
        self._display.update(view, refresh=True)
