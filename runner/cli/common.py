"""What every command shares: the consoles (stdout, stderr), warnings, and the plan a
command starts from (with the executor's view reconciled into the ledger)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """`runner status | head`: the reader is gone. rich exits 1 here; the runner ends
        quietly with 0 instead, as other command-line tools do (see main)."""
        self.quiet = True
        raise BrokenPipeError


# Not a terminal (pipes, CI logs): wide enough that tables don't truncate ids and names.
# emoji=False: ':100:' in 'matrix.yaml:100:' must not become an emoji.
console = _Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)


def _warn(text: str) -> None:
    err.print("[yellow]warning:[/]", end=" ")
    err.print(text, markup=False)


def _plan(args: argparse.Namespace) -> Any:
    from runner.plan import make_plan
    from runner.sweep.preflight import (
        check_data,
        executor_warnings,
        run_elsewhere,
        tracking_warnings,
    )

    plan = make_plan(args.matrix)
    for w in plan.expansion.warnings:
        err.print("[yellow]warning:[/]", end=" ")
        err.print(w.render(plan.matrix.file), markup=False)
    if getattr(args, "executor", None):
        run_elsewhere(plan, args.executor, args.slots)
    if getattr(args, "command", None) in ("plan", "sweep", "resume", "profile"):
        for warning in [*check_data(plan, args.command != "plan"), *tracking_warnings(plan)]:
            _warn(warning)
    if getattr(args, "command", None) == "plan":
        for warning in executor_warnings(plan):
            _warn(warning)
    return plan


def _reconcile(plan: Any) -> None:
    """Write into the ledger the ends the executor knows of and the cells did not say (a
    SLURM job that died before its cell started, an admin's scancel): one query in all."""
    from runner.sweep.reconcile import reconcile

    if warning := reconcile(plan):
        _warn(warning)
