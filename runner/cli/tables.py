"""Status tables (rich) and what a cell's heartbeat says of its progress.

A matrix of up to ``BIG`` cells gets one row per cell. A bigger one gets a summary (counts by
state and by axis value) and the rows that matter (running and failed first): a 10,000-row
rich table takes seconds to lay out and nobody reads it. ``--all`` prints every row as
plain aligned text, which costs milliseconds. Ids and run names are never truncated, and a
column that is empty in every row is left out.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runner.ledger import CellState
from runner.matrix.cells import Cell, Labels, label_of

#: Above this many cells, a summary and the rows that matter instead of every row.
BIG = 50
#: Shown first when not every row is: the cells someone has to look at or wait for.
URGENT = ("running", "cancelling", "failed", "diverged", "cancelled", "submitted", "queued")
ORDER = ("done", "pruned", "running", "cancelling", "submitted", "queued", "pending", "failed")
ORDER += ("diverged", "cancelled")
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
#: An axis with more distinct values than this (seeds, sampled learning rates) is not
#: summarised value by value.
AXIS_VALUES_MAX = 12


def dice(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _value(key: str, value: object, labels: Labels | None) -> str:
    """An axis value as the table shows it: the matrix's own label when it gives one."""
    return label_of(key, value, labels, derive=False) or _show(value)


def _show(value: object) -> str:
    """A value as a table shows it: sampled floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_s(progress: dict[str, Any], s_per_epoch: float | None, spent: float = 0.0) -> float | None:
    """Seconds left: the epochs still to train at ``s_per_epoch`` (else the recipe's own
    ``epoch_seconds``), less ``spent``, the time already spent on the current epoch. (The
    heartbeat's own time can't tell: it is rewritten every 10 s, epoch or not.)"""
    epoch, total = progress.get("epoch"), progress.get("max_epochs")
    rate = s_per_epoch if s_per_epoch is not None else progress.get("epoch_seconds")
    if not all(isinstance(v, (int, float)) for v in (epoch, total, rate)):
        return None
    return max(0.0, (total - epoch) * rate - spent)


def epoch_text(state: CellState, s_per_epoch: float | None = None, spent: float = 0.0) -> str:
    """``epoch 3/10 loss 0.412 ETA 2m10s`` for a running cell that reported an epoch."""
    p = state.progress
    if state.state != "running" or "epoch" not in p:
        return ""
    unit = "step" if "step" in p else "epoch"
    out = f"{unit} {p['epoch']}/{p.get('max_epochs', '?')}"
    if isinstance(p.get("train_loss"), (int, float)):
        out += f" loss {p['train_loss']:.3f}"
    if (left := eta_s(p, s_per_epoch, spent)) is not None:
        out += f" ETA {duration(left)}"
    return out


def note(state: CellState) -> str:
    return (epoch_text(state) or (state.reason or ""))[:80]


def summary(states: dict[str, CellState]) -> str:
    counts = Counter(s.state for s in states.values())
    return ", ".join(f"{counts[k]} {k}" for k in _ordered(counts))


def _ordered(present: Counter[str]) -> list[str]:
    """The states present, in ORDER; one this module does not know yet after them."""
    return [*(k for k in ORDER if present[k]), *sorted(k for k in present if k not in ORDER)]


def _columns(
    cells: list[Cell], states: dict[str, CellState] | None, labels: Labels | None = None
) -> list[tuple[str, list[str]]]:
    """(header, one text per cell) for every column that is not empty in every row; a value
    the matrix labels (``layerwise: {...}``) shows as its label."""
    keys = list(dict.fromkeys(k for c in cells for k in c.values))
    cols = [("cell", [c.id for c in cells]), ("run name", [c.run_name for c in cells])]
    cols += [
        (k, [_value(k, c.values[k], labels) if k in c.values else "" for c in cells]) for k in keys
    ]
    if states is not None:
        st = [states[c.id] for c in cells]
        cols += [
            ("state", [s.state for s in st]),
            ("attempts", [str(s.attempts) if s.attempts else "" for s in st]),
            ("best val Dice", [dice(s.best_val_dice) for s in st]),
            ("oom remedy", ["+".join(s.remedy) for s in st]),
            ("progress / reason", [note(s) for s in st]),
        ]
    return [(h, v) for h, v in cols if h in ("cell", "run name") or any(v)]


def _fits(cols: list[tuple[str, list[str]]], width: int) -> bool:
    """Whether a boxed table can hold the id, run name and state columns at full width and
    leave the other columns a few characters each (rich folds them)."""
    need = 1
    for header, values in cols:
        whole = header in ("cell", "run name", "state")
        need += 3 + (max(len(header), *map(len, values)) if whole else 4)
    return need <= width


def cell_table(
    cells: list[Cell], states: dict[str, CellState] | None, labels: Labels | None = None
) -> Table:
    """One row per cell; ids, run names and states never wrap, other columns fold."""
    cols = _columns(cells, states, labels)
    table = Table()
    for header, values in cols:
        whole = header in ("cell", "run name", "state")
        longest = max(len(header), *map(len, values)) if values else len(header)
        table.add_column(
            escape(header),
            style="bold" if header == "cell" else None,
            no_wrap=whole,
            min_width=longest if whole else None,
            overflow="ellipsis" if whole else "fold",
        )
    for i, _ in enumerate(cells):
        row = []
        for header, values in cols:
            text = escape(values[i])
            if header == "state":
                text = f"[{STATE_STYLE.get(values[i], 'default')}]{text}[/]"
            row.append(text)
        table.add_row(*row)
    return table


def plain_table(
    cells: list[Cell], states: dict[str, CellState] | None, labels: Labels | None = None
) -> Text:
    """Every row as aligned plain text: what ``--all`` prints for a big matrix (a rich table
    lays out 10,000 rows in seconds; this joins strings)."""
    cols = _columns(cells, states, labels)
    widths = [max(len(h), *map(len, v)) if v else len(h) for h, v in cols]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(cols, widths, strict=True))]
    for i in range(len(cells)):
        lines.append("  ".join(v[i].ljust(w) for (_, v), w in zip(cols, widths, strict=True)))
    return Text("\n".join(line.rstrip() for line in lines))


def chosen_rows(cells: list[Cell], states: dict[str, CellState], limit: int) -> list[Cell]:
    """Up to ``limit`` cells: running, failed... first (in that order), then the others in
    matrix order."""
    rank = {s: i for i, s in enumerate(URGENT)}
    urgent = sorted(
        (c for c in cells if states[c.id].state in rank), key=lambda c: rank[states[c.id].state]
    )[:limit]
    taken = {c.id for c in urgent}
    rest = [c for c in cells if c.id not in taken][: limit - len(urgent)]
    return urgent + rest


def axis_table(
    cells: list[Cell], states: dict[str, CellState], labels: Labels | None = None
) -> Table | None:
    """Counts by state for each value of each axis with 2 to AXIS_VALUES_MAX values."""
    counts: dict[str, dict[str, Counter[str]]] = {}
    for c in cells:
        for k, v in c.values.items():
            shown = _value(k, v, labels)
            counts.setdefault(k, {}).setdefault(shown, Counter())[states[c.id].state] += 1
    axes = {k: v for k, v in counts.items() if 2 <= len(v) <= AXIS_VALUES_MAX}
    if not axes:
        return None
    present = _ordered(sum((n for by in axes.values() for n in by.values()), Counter()))
    table = Table(title="by axis value", title_justify="left")
    table.add_column("axis", no_wrap=True)
    table.add_column("value", overflow="fold")
    for s in present:
        table.add_column(s, justify="right", style=STATE_STYLE.get(s))
    for k, by in axes.items():
        for value, n in by.items():
            table.add_row(escape(k), escape(value), *(str(n[s]) if n[s] else "" for s in present))
    return table


def status_view(
    title: str,
    cells: list[Cell],
    states: dict[str, CellState] | None,
    width: int,
    show_all: bool = False,
    limit: int = BIG,
    see_all: str = "",
    by_axis: bool = True,
    labels: Labels | None = None,
) -> list[RenderableType]:
    """What ``plan``/``status`` print: the table (or, above ``limit`` cells, a summary and
    the rows that matter), never truncating an id or a run name at this ``width``.
    ``see_all``: the command that shows every row, said when rows are left out;
    ``by_axis``: with the counts by axis value."""
    if states is None or len(cells) <= limit or show_all:
        cols = _columns(cells, states, labels)
        if len(cells) > BIG or not _fits(cols, width):
            return [Text(title), plain_table(cells, states, labels)]
        return [Text(title), cell_table(cells, states, labels)]
    rows = chosen_rows(cells, states, limit)
    out: list[RenderableType] = [
        Text(f"{title}; {len(rows)} of them below, running and failed first")
    ]
    if by_axis and (axes := axis_table(cells, states, labels)) is not None:
        out.append(axes)
    fit = _fits(_columns(rows, states, labels), width)
    out.append(cell_table(rows, states, labels) if fit else plain_table(rows, states, labels))
    if see_all:
        out.append(Text(f"every cell: {see_all}"))
    return out
