"""Which cells a command acts on: ``sweep`` takes cells that never ran; ``resume`` takes
failed, cancelled and lost cells (and never-submitted ones; diverged and pruned ones only with
``--only``); ``cancel`` takes cells in flight.
Filters by failure reason (``--only oom,timeout``) and by id (``--cells ID,...``).
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.errors import RunnerError, did_you_mean, format_choices
from runner.ledger import IN_FLIGHT, CellState
from runner.matrix.cells import Cell

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


def _by_ids(cells: list[Cell], ids: Iterable[str]) -> list[Cell]:
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
    chosen = _by_ids(cells, ids) if ids else cells
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
    chosen = _by_ids(cells, ids) if ids else cells
    return [c for c in chosen if states[c.id].state in IN_FLIGHT]
