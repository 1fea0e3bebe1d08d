"""Tables and live progress for the terminal (rich), and plain lines when not a terminal."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner.ledger import CellState
from runner.matrix.cells import Cell

STATE_STYLE = {
    "pending": "dim",
    "queued": "cyan",
    "submitted": "cyan",
    "running": "yellow",
    "cancelling": "yellow",
    "done": "green",
    "pruned": "blue",
    "failed": "red",
    "diverged": "magenta",
    "cancelled": "red",
}


def _dice(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _epoch_text(state: CellState) -> str:
    p = state.progress
    if state.state != "running" or "epoch" not in p:
        return ""
    out = f"epoch {p['epoch']}/{p.get('max_epochs', '?')}"
    if isinstance(p.get("train_loss"), (int, float)):
        out += f" loss {p['train_loss']:.3f}"
    return out


def _show(value: object) -> str:
    """A value as a table shows it: sampled floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cell_table(title: str, cells: list[Cell], states: dict[str, CellState] | None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("cell", style="bold")
    table.add_column("run name")
    for key in dict.fromkeys(k for c in cells for k in c.values):
        table.add_column(escape(key))
    if states is not None:
        for col in ("state", "attempts", "best val Dice", "progress / reason"):
            table.add_column(col)
    keys = list(dict.fromkeys(k for c in cells for k in c.values))
    for c in cells:
        row = [c.id, escape(c.run_name), *(escape(_show(c.values.get(k, ""))) for k in keys)]
        if states is not None:
            s = states[c.id]
            note = _epoch_text(s) or (s.reason or "")
            row += [
                f"[{STATE_STYLE.get(s.state, 'default')}]{s.state}[/]",
                str(s.attempts),
                _dice(s.best_val_dice),
                escape(note[:80]),
            ]
        table.add_row(*row)
    return table


def summary(states: dict[str, CellState]) -> str:
    counts = Counter(s.state for s in states.values())
    order = ["done", "pruned", "running", "cancelling", "submitted", "queued", "pending"]
    order += ["failed"]
    order += ["diverged", "cancelled"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts[k])


class LiveProgress:
    """Prints one line per cell state change (readable in logs and CI) plus totals."""

    def __init__(self, console: Console, cells: list[Cell]) -> None:
        self.console = console
        self.cells = cells  # the plan's own list: a search adds trials to it as it goes
        self.names = {c.id: c.run_name for c in cells}
        self.seen: dict[str, tuple[str, Any]] = {}
        self.start = time.monotonic()

    def __call__(self, states: dict[str, CellState]) -> None:
        if len(self.names) != len(self.cells):
            self.names = {c.id: c.run_name for c in self.cells}
        for cid, s in states.items():
            key = (s.state, s.progress.get("epoch"))
            if self.seen.get(cid) == key:
                continue
            self.seen[cid] = key
            if s.state == "pending":
                continue
            elapsed = time.monotonic() - self.start
            detail = _epoch_text(s) or (
                f"best val Dice {_dice(s.best_val_dice)}"
                if s.best_val_dice is not None
                else (s.reason or "")
            )
            style = STATE_STYLE.get(s.state, "default")
            self.console.print(
                f"[{elapsed:6.0f}s] {escape(self.names.get(cid, cid)):<40} "
                f"[{style}]{s.state:<9}[/] {escape(detail)}  ({summary(states)})",
                highlight=False,
            )
