"""Which cells a command acts on: ``sweep`` takes cells that never ran; ``resume`` takes
failed, cancelled and lost cells (and never-submitted ones; diverged and pruned ones only with
``--only``); ``cancel`` takes cells in flight; ``rerun`` takes ended cells, done ones too.
Filters by failure reason (``--only oom,timeout``), by id (``--cells ID,...``) and by axis
value (``--where model=unet``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from runner.errors import RunnerError, did_you_mean, format_choices
from runner.ledger import IN_FLIGHT, CellState
from runner.matrix.cells import Cell, Labels, label_of

#: Reason kinds a failed cell can have (the text before the first ':' of its reason).
REASON_KINDS = (
    "exception",
    "oom",
    "lost",
    "timeout",
    "preempted",
    "cancelled",
    "node_fail",
    "slurm",
    "diverged",
    "pruned",
)


def reason_kind(state: CellState) -> str:
    if state.state in ("diverged", "cancelled", "pruned"):
        return state.state
    return (state.reason or "lost").split(":", 1)[0].strip()


def parse_list(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def by_ids(cells: list[Cell], ids: Iterable[str]) -> list[Cell]:
    """The cells named by id, id prefix (4+ characters) or run name, in that order."""
    known = {c.id: c for c in cells}
    names = {c.run_name: c for c in cells}
    out = []
    for i in ids:
        cell = known.get(i) or names.get(i)
        if cell is None:
            prefixed = [c for c in cells if c.id.startswith(i)] if len(i) >= 4 else []
            if len(prefixed) == 1:
                cell = prefixed[0]
            else:
                raise RunnerError(
                    f"no cell '{i}' in this matrix (give a cell id, an id prefix of 4+ "
                    f"characters, or a run name){did_you_mean(i, [*known, *names])}"
                )
        out.append(cell)
    return out


def for_resume(
    cells: list[Cell], states: dict[str, CellState], only: list[str] | None, ids: list[str] | None
) -> list[Cell]:
    """Failed, cancelled and lost cells, plus never-submitted ones (those only without --only)."""
    for kind in only or []:
        if kind not in REASON_KINDS:
            raise RunnerError(
                f"--only: unknown reason '{kind}'; valid choices: "
                f"{format_choices(REASON_KINDS)}{did_you_mean(kind, REASON_KINDS)}"
            )
    chosen = by_ids(cells, ids) if ids else cells
    out = []
    for cell in chosen:
        s = states[cell.id]
        if ids and s.state in IN_FLIGHT:
            raise RunnerError(
                f"cell {cell.id} ({cell.run_name}) is {s.state}"
                f"{f' as job {s.job_id}' if s.job_id else ''}: not resubmitted "
                "(cancel it first if it is stuck)"
            )
        # Diverged and pruned cells are verdicts: retried only when --only names them.
        retry = s.state in ("failed", "cancelled") or (
            s.state in ("diverged", "pruned") and bool(only)
        )
        if (s.state == "pending" and not only) or (retry and (not only or reason_kind(s) in only)):
            out.append(cell)
    return out


def for_cancel(
    cells: list[Cell], states: dict[str, CellState], ids: list[str] | None
) -> list[Cell]:
    chosen = by_ids(cells, ids) if ids else cells
    return [c for c in chosen if states[c.id].state in IN_FLIGHT]


def by_where(
    cells: list[Cell], where: list[str] | None, labels: Labels | None = None
) -> list[Cell]:
    """The cells whose values match every ``KEY=VALUE`` (a value as YAML reads it, as it
    prints, or as its label in the matrix: ``--where model=unet --where optimizer.lr=1e-3``)."""
    if not where:
        return cells
    keys = list(dict.fromkeys(k for c in cells for k in c.values))
    out = cells
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RunnerError(f"--where {item!r}: give KEY=VALUE, e.g. --where seed=0")
        if key not in keys:
            raise RunnerError(
                f"--where {item!r}: no axis '{key}'; valid choices: "
                f"{format_choices(keys)}{did_you_mean(key, keys)}"
            )
        wanted = _yaml_value(value)
        out = [
            c
            for c in out
            if key in c.values
            and (
                c.values[key] == wanted
                or str(c.values[key]) == value
                or label_of(key, c.values[key], labels, derive=False) == value
            )
        ]
    if not out:
        raise RunnerError(f"--where {' '.join(where)}: no cell matches")
    return out


def chosen(
    cells: list[Cell],
    ids: list[str] | None,
    where: list[str] | None,
    labels: Labels | None = None,
) -> list[Cell]:
    """The cells ``--cells`` and ``--where`` name together (all when neither is given)."""
    return by_where(by_ids(cells, ids) if ids else cells, where, labels)


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def for_rerun(cells: list[Cell], states: dict[str, CellState], picked: list[Cell]) -> list[Cell]:
    """Cells to train again from scratch: ended ones (done ones included); one in flight is
    refused (cancel it first)."""
    for cell in picked:
        s = states[cell.id]
        if s.state in IN_FLIGHT:
            raise RunnerError(
                f"cell {cell.id} ({cell.run_name}) is {s.state}: not rerun (cancel it first)"
            )
    return [c for c in picked if states[c.id].state != "pending"]
