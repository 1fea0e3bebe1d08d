"""The groups a report can't show, and why: none of their cells is done (or a done cell's
run holds no ``val_dice``), so they have no figures; listing them keeps a missing arm from
passing unseen."""

from __future__ import annotations

from collections import Counter
from typing import Any

from runner.plan import Plan
from runner.report.stats import CellResult, group_label


def groups_without_results(plan: Plan, results: list[CellResult]) -> list[dict[str, Any]]:
    """One row per group of the matrix with no cell in ``results``: its cells' states and
    the reasons they gave (``reason`` of a failed, pruned, cancelled... cell)."""
    names = set(plan.recipe.groups)
    shown = {group_label(r.cell.values, names, plan.matrix.labels) for r in results}
    scored = {r.cell.id for r in results}
    states = plan.states()
    rows: dict[str, dict[str, Any]] = {}
    for cell in plan.cells:
        label = group_label(cell.values, names, plan.matrix.labels)
        if label in shown:
            continue
        s = states[cell.id]
        row = rows.setdefault(label, {"group": label, "cells": 0, "states": Counter(), "why": []})
        row["cells"] += 1
        state = s.state
        if state == "done" and cell.id not in scored:
            state = "done without val_dice"  # its run logged none (or is gone)
        row["states"][state] += 1
        if s.reason and len(row["why"]) < 3:
            row["why"].append(f"{cell.run_name}: {state}: {s.reason}")
    out = []
    for row in rows.values():
        row["states"] = dict(sorted(row["states"].items()))
        row["summary"] = ", ".join(f"{n} {state}" for state, n in row["states"].items())
        out.append(row)
    return out
