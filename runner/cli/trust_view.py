"""``runner report`` on the terminal, after the tables: how far to trust them (notes, seeds
needed, tuning budgets), the groups with no result; and the report's extra files."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.plan import Plan
from runner.report import html, paper


def _n(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_trust(console: Console, report: Any) -> None:
    trust = report.trust or {}
    seeds = trust.get("seeds") or []
    if seeds:
        delta = trust.get("delta")
        table = Table(
            title=f"seeds needed per group to detect a difference from {trust['reference']} "
            "(two-sided t-test, α = 0.05, 80% power; std over seeds of best val Dice)",
            title_justify="left",
        )
        cols = ["group", "n", "Δ seen", "std", "seeds for Δ seen"]
        cols += [f"seeds for Δ = {delta:g}"] if delta else []
        for col in cols:
            table.add_column(col)
        for r in seeds:
            cells = [r["group"], str(r["n"]), _n(r["difference_seen"]), _n(r["sd_over_seeds"])]
            cells.append(_seeds(r["seeds_for_seen"]))
            if delta:
                cells.append(_seeds(r["seeds_for_delta"]))
            table.add_row(*cells)
        console.print(table)
    arms = trust.get("budgets") or []
    if len(arms) > 1:
        flagged = {f["arm"] for f in trust.get("unfair", [])}
        table = Table(
            title="tuning budget per arm (flagged: trials or epochs beyond "
            f"{trust['budget_factor']:g}x the reference's, {trust['reference']})",
            title_justify="left",
        )
        for col in ("arm", "cells run", "epochs", arms[0]["hours_kind"], "pruned", ""):
            table.add_column(col)
        for a in arms:
            table.add_row(
                a["arm"], str(a["trials"]), str(a["epochs"]), _n(a["hours"], 3),
                f"{100 * a['pruned_fraction']:.0f}%", "unequal" if a["arm"] in flagged else "",
            )  # fmt: skip
        console.print(table)
    print_missing(console, report)
    for note in trust.get("notes", []):
        console.print(f"trust: {note}", markup=False, style="yellow")


def _seeds(n: int | None) -> str:
    return "> 1000" if n is None else str(n)


def print_missing(console: Console, report: Any) -> None:
    for m in report.missing:
        why = f" ({'; '.join(m['why'])})" if m["why"] else ""
        console.print(
            f"group {m['group']}: no result: {m['cells']} cell{'s' * (m['cells'] != 1)}, "
            f"{m['summary']}{why}",
            markup=False,
        )


def write_extras(
    report: Any, groups: list[Any], out_dir: Path, args: argparse.Namespace, plan: Plan
) -> list[Path]:
    """ranking.md / ranking.tex always; report.html with ``--html``."""
    files = paper.write(report, out_dir)
    if args.html:
        files.append(html.write(report, groups, out_dir, plan.matrix.spec.name))
    return files
