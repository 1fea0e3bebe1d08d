"""What ``runner resume`` says about out-of-memory cells: the remedy each one goes again with,
the ones left out (no remedy left: they would fail the same way), or, for a matrix without an
``on_oom`` block, that they retry unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runner.cli.common import _warn, console
from runner.job.memory import oom_kind
from runner.sweep import remedies


def resume_chooser(plan: Any, chooser: Callable[[Any, Any], list[Any]]) -> Callable[..., Any]:
    """``chooser`` (the resume selection), with out-of-memory cells given their next remedy
    or left out, each said in one line."""

    def choose(cells: list[Any], states: dict[str, Any]) -> list[Any]:
        picked = chooser(cells, states)
        names = {c.id: c.run_name or c.id for c in cells}
        oom = [c for c in picked if oom_kind(states[c.id].reason)]
        if not oom:
            return picked
        if plan.matrix.spec.on_oom is None:
            _warn(
                f"{len(oom)} cell(s) ran out of memory and go again unchanged; an on_oom block "
                "in the matrix retries them with a remedy (README: Out of memory)"
            )
            return picked
        kept, refused = remedies.choose(plan, picked, states)
        for cell in oom:
            if cell.id in refused:
                _warn(f"{cell.id} ({names[cell.id]}) not resumed: {refused[cell.id]}")
                continue
            record = plan.ledger.cell(cell.id)
            decision = remedies.decide(plan, cell, record, states[cell.id])
            if decision.remedy is not None and decision.remedy.added:
                console.print(
                    f"{cell.id} ({names[cell.id]}): out of {oom_kind(states[cell.id].reason)} "
                    f"memory; next attempt with {remedies.describe(decision.remedy)}",
                    markup=False,
                    soft_wrap=True,
                )
        return kept

    return choose
