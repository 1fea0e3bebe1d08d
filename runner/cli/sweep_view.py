"""What ``sweep`` and ``resume`` print when they end: what was submitted, where things are,
and, for a sweep that followed its cells, where it got to: the best groups so far, the
cells that failed (with their logs) and the command that comes next."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console

from runner.cli.logs import failed_lines
from runner.ledger import CellState
from runner.plan import Plan
from runner.report.stats import group_label

#: How many groups the end of a sweep shows.
TOP = 5


def top_groups(plan: Plan, states: dict[str, CellState]) -> tuple[str, list[str]]:
    """The best groups (every axis but the seeds) by the done cells' selection metric (the
    recipe's ``training.select``; best val Dice by default): mean ± std over their seeds, and
    how many; from the ledger, in milliseconds. Also what they are ranked by, for the header:
    val Dice when the cells were selected on different metrics, as ``runner report`` does."""
    done = [c for c in plan.cells if states[c.id].state == "done"]
    chosen = {states[c.id].selected()[:2] for c in done}
    metric, mode = chosen.pop() if len(chosen) == 1 else ("val_dice", "max")
    by_group: dict[str, list[float]] = {}
    names = set(plan.recipe.groups)
    for cell in done:
        state = states[cell.id]
        best = state.selected()[2] if metric != "val_dice" else state.best_val_dice
        if best is not None:
            label = group_label(cell.values, names, plan.matrix.labels)
            by_group.setdefault(label, []).append(float(best))
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(by_group.items(), key=lambda kv: sign * statistics.fmean(kv[1]))
    lines = []
    for label, values in ranked[:TOP]:
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        lines.append(f"  {statistics.fmean(values):.3f}{spread}  (n={len(values)})  {label}")
    if len(ranked) > TOP:
        lines.append(f"  ... {len(ranked) - TOP} more groups")
    what = "best val Dice" if metric == "val_dice" else f"best {metric}, {mode}"
    return what, lines


def ending(console: Console, plan: Plan, states: dict[str, CellState], followed: bool) -> None:
    """The end of a followed sweep: the top groups, the failed cells, what to run next."""
    if not followed:
        return
    what, lines = top_groups(plan, states)
    if lines:
        console.print(f"best groups so far ({what}, mean ± std over seeds):", markup=False)
        for line in lines:
            console.print(line, markup=False, soft_wrap=True)
    if failed := failed_lines(plan, states):
        console.print("failed cells:", markup=False)
        for line in failed:
            console.print(line, markup=False, soft_wrap=True)
    console.print(f"next: runner report {plan.matrix.file}", markup=False, soft_wrap=True)


def submitted_lines(outcome: Any, verb: str) -> list[str]:
    """What the sweep did with the cells it chose."""
    skipped = ", ".join(f"{n} {s}" for s, n in sorted(outcome.skipped.items()))
    if not outcome.submitted:
        what = "nothing new to submit" if verb == "sweep" else "nothing to resume"
        lines = [f"{what}: no cell needs it ({skipped})."]
        if outcome.lost_race:
            lines.append(f"{len(outcome.lost_race)} cells were claimed by a concurrent sweep.")
        if verb == "sweep" and (outcome.skipped.get("failed") or outcome.skipped.get("diverged")):
            lines.append(
                "failed cells are retried by `runner resume` (not by sweep), so that a "
                "sweep never repeats work by accident."
            )
        return lines
    left = f"left {sum(outcome.skipped.values())} alone ({skipped})" if skipped else ""
    if outcome.scheduler:
        return [
            f"handed {len(outcome.submitted)} cells to a background scheduler "
            f"(pid {outcome.scheduler['pid']}), which keeps the executor's slots busy"
            + (f"; {left}" if left else ""),
            f"  its log: {outcome.scheduler['log']}",
            "follow the cells with `runner status`; stop them with `runner cancel`",
        ]
    lines = [f"submitted {len(outcome.submitted)} cells" + (f", {left}" if left else "")]
    if outcome.mode != "follow":
        lines += [f"  {cid}  job {job}" for cid, job in outcome.job_ids.items()]
        lines.append("the cells run on; follow them with `runner status` (or sweep --wait)")
    return lines
