"""Out-of-memory remedies: a cell that ran out of memory goes again with the next step of the
matrix's ``on_oom`` policy (runner.matrix.on_oom), not with the configuration that failed.

How a remedy travels: when a cell's next attempt is claimed (``runner resume``, or at once
with ``on_oom.auto``), :func:`decide` reads the cell's history (the last attempt's reason, the
remedies in force) and composes the cell's config with them; the next applicable step for
that memory (GPU steps for ``oom: gpu``; loader steps, then GPU steps, for ``oom: host``) is
added. The claimed attempt's ``remedy.json`` holds every remedy in force, with the Hydra
overrides they make; the job's overrides are the cell's plus those (runner.sweep.queue), so
the cell id, its run and its ledger stay the same. Every later attempt of the cell (a resume
after a time-out, say) keeps them. A step that invalidates the checkpoint (``bf16``,
``smaller_patch``) starts the attempt from scratch: the earlier run is tagged superseded and
its checkpoints set aside, as ``runner rerun`` does.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from runner.job.memory import GPU, oom_kind
from runner.ledger import Attempt, CellRecord, CellState, Remedy
from runner.matrix.cells import Cell
from runner.matrix.on_oom import STEPS, override

if TYPE_CHECKING:
    from runner.plan import Plan


@dataclass
class Decision:
    """What a cell's next attempt runs with: ``remedy`` (None: no remedy in force), or why
    it should not run again (``refusal``: no step left)."""

    remedy: Remedy | None = None
    refusal: str | None = None

    @property
    def overrides(self) -> list[str]:
        return list(self.remedy.overrides) if self.remedy else []


def in_force(record: CellRecord) -> Remedy | None:
    """The remedies the cell's latest attempt with any ran with."""
    for attempt in reversed(record.attempts()):
        remedy = attempt.load(Remedy)
        if remedy is not None:
            return remedy
    return None


def decide(plan: Plan, cell: Cell, record: CellRecord, state: CellState | None = None) -> Decision:
    """The remedies of the cell's next attempt (see the module's docstring)."""
    current = in_force(record)
    state = state or record.state()
    kind = oom_kind(state.reason) if state.state == "failed" else None
    policy = plan.matrix.spec.on_oom
    if policy is None or kind is None:
        if current is None:
            return Decision()
        return Decision(Remedy(steps=list(current.steps), overrides=list(current.overrides)))
    history = [a.load(Remedy) for a in record.attempts()]
    tries = sum(1 for r in history if r is not None and r.added)
    steps_so_far = list(current.steps) if current else []
    if tries >= policy.max_tries:
        return Decision(
            refusal=f"out of {kind} memory again after {tries} remedies "
            f"({'+'.join(steps_so_far)}; on_oom.max_tries={policy.max_tries})"
        )
    base = [*plan.matrix.spec.base, *cell.overrides, *(current.overrides if current else [])]
    try:
        cfg = plan.recipe.compose(base)
    except Exception as exc:  # a config that no longer composes: say so, run nothing
        return Decision(refusal=f"its config does not compose with the remedies so far: {exc}")
    used, budget = Counter(steps_so_far), Counter(policy.steps)
    wanted = [n for n in policy.steps if STEPS[n].memory == kind]
    if kind != GPU:  # a host OOM with no loader step left: the process itself was too big
        wanted += [n for n in policy.steps if STEPS[n].memory == GPU]
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(wanted):
        if used[name] >= budget[name]:
            continue
        change = STEPS[name].plan(cfg)
        if isinstance(change, str):
            skipped[name] = change
            continue
        return Decision(
            Remedy(
                steps=[*steps_so_far, name],
                overrides=_merged(current.overrides if current else [], change),
                added=name,
                changed={k: list(pair) for k, pair in change.items()},
                after=state.reason,
                resumes=STEPS[name].resumes,
                skipped=skipped,
            )
        )
    tried = f"tried {'+'.join(steps_so_far)}; " if steps_so_far else ""
    why = "; ".join(f"{n}: {w}" for n, w in skipped.items()) or "every step is used"
    return Decision(refusal=f"no {kind}-memory remedy left in on_oom.steps ({tried}{why})")


def _merged(overrides: list[str], change: dict[str, tuple[object, object]]) -> list[str]:
    """``overrides`` with each changed key set to its new value (an earlier value dropped)."""
    kept = [o for o in overrides if o.partition("=")[0] not in change]
    return kept + [override(k, after) for k, (_, after) in change.items()]


def choose(
    plan: Plan, cells: list[Cell], states: dict[str, CellState]
) -> tuple[list[Cell], dict[str, str]]:
    """Of the cells a resume chose, those that may run again, and why the others may not
    (an out-of-memory cell with no remedy left would fail the same way)."""
    kept, refused = [], {}
    for cell in cells:
        if oom_kind(states[cell.id].reason) is None or plan.matrix.spec.on_oom is None:
            kept.append(cell)
            continue
        decision = decide(plan, cell, plan.ledger.cell(cell.id), states[cell.id])
        if decision.refusal:
            refused[cell.id] = decision.refusal
        else:
            kept.append(cell)
    return kept, refused


def auto_retry(plan: Plan, cell_id: str) -> Cell | None:
    """With ``on_oom.auto``, the cell to claim again at once: one that just ran out of memory
    and has a remedy left."""
    policy = plan.matrix.spec.on_oom
    if policy is None or not policy.auto:
        return None
    record = plan.ledger.cell(cell_id)
    state = record.state()
    if state.state != "failed" or oom_kind(state.reason) is None:
        return None
    cell = next((c for c in plan.cells if c.id == cell_id), None)
    if cell is None or decide(plan, cell, record, state).remedy is None:
        return None
    return cell


def apply(plan: Plan, cell: Cell, decision: Decision, attempt: Attempt) -> None:
    """Record the claimed ``attempt``'s remedies; one that invalidates the checkpoint sets
    the earlier run and checkpoints aside first, so that the attempt starts from scratch."""
    if decision.remedy is None:
        return
    if not decision.remedy.resumes and decision.remedy.added:
        from runner.sweep.rerun import supersede

        supersede(plan, [cell])
    attempt.save(replace(decision.remedy, time=time.time()))


def describe(remedy: Remedy) -> str:
    """One line: ``halve_batch (training.batch_size 2 -> 1, ...)``."""
    changes = ", ".join(f"{k} {b} -> {a}" for k, (b, a) in remedy.changed.items())
    fresh = "" if remedy.resumes else "; from scratch (the checkpoint no longer fits)"
    return f"{remedy.added} ({changes}{fresh})"
