"""``runner``: plan, sweep and inspect experiment matrices.

    runner plan MATRIX [--json]      the cells, their run names and states
    runner sweep MATRIX [--no-wait]  submit the cells that never ran; follow them
    runner status MATRIX [--json]    states, attempts and best val Dice per cell

User errors print one clear message per problem and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from runner.errors import RunnerError

# Not a terminal (pipes, CI logs): wide enough that tables don't truncate ids and names.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _plan(args: argparse.Namespace):
    from runner.schedule import make_plan

    plan = make_plan(args.matrix)
    for w in plan.expansion.warnings:
        err.print(f"[yellow]warning:[/] {w.render(plan.matrix.file)}", markup=True)
    return plan


def _states_json(plan, states) -> list[dict]:
    return [
        {
            "id": c.id,
            "run_name": c.run_name,
            "values": c.values,
            "overrides": [*plan.matrix.spec.base, *c.overrides],
            "state": states[c.id].state,
            "attempts": states[c.id].attempts,
            "run_id": states[c.id].run_id,
            "reason": states[c.id].reason,
            "best_val_dice": states[c.id].best_val_dice,
        }
        for c in plan.cells
    ]


def cmd_plan(args: argparse.Namespace) -> int:
    from runner.display import cell_table, summary

    plan = _plan(args)
    states = plan.states()
    if args.json:
        print(
            json.dumps(
                {
                    "matrix": plan.matrix.spec.name,
                    "count": len(plan.cells),
                    "cells": _states_json(plan, states),
                },
                indent=1,
                default=str,
            )
        )
        return 0
    spec = plan.matrix.spec
    title = (
        f"{spec.name}: {len(plan.cells)} cells, recipe {spec.recipe}, executor {spec.executor.kind}"
    )
    console.print(cell_table(title, plan.cells, states))
    console.print(f"{len(plan.cells)} cells: {summary(states)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return cmd_plan(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from runner.display import LiveProgress, summary
    from runner.schedule import submit

    plan = _plan(args)
    spec = plan.matrix.spec
    console.print(f"matrix {spec.name}: {len(plan.cells)} cells, executor {spec.executor.kind}")
    observe = LiveProgress(console, plan.cells)
    outcome = submit(plan, wait=args.wait, observe=observe)
    if not outcome.submitted:
        why = ", ".join(f"{n} {s}" for s, n in sorted(outcome.skipped.items()))
        console.print(f"nothing new to submit: every cell already ran or is in flight ({why}).")
        if outcome.lost_race:
            console.print(f"{len(outcome.lost_race)} cells were claimed by a concurrent sweep.")
        if outcome.skipped.get("failed") or outcome.skipped.get("diverged"):
            console.print(
                "failed or diverged cells are retried by `runner resume` "
                "(not by sweep), so that a sweep never repeats work by accident."
            )
    else:
        console.print(
            f"submitted {len(outcome.submitted)} cells"
            + (
                f", skipped {sum(outcome.skipped.values())} ("
                + ", ".join(f"{n} {s}" for s, n in outcome.skipped.items())
                + ")"
                if outcome.skipped
                else ""
            )
        )
    states = plan.states()
    console.print(f"states: {summary(states)}")
    uri = plan.tracking_uri
    console.print(f"MLflow store: {uri}  (experiment '{spec.name}')")
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        console.print(
            f"open the UI with: make ui   (or: mlflow ui --backend-store-uri "
            f"{uri} --host 127.0.0.1 --port 5000)"
        )
    bad = [s for s in states.values() if s.state in ("failed", "diverged")]
    return 1 if bad and outcome.submitted else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, fn, text in [
        ("plan", cmd_plan, "show the cells of a matrix and their states"),
        ("status", cmd_status, "show the states of a matrix's cells"),
        ("sweep", cmd_sweep, "submit the cells that never ran"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("matrix", type=Path, help="the matrix YAML file")
        p.set_defaults(fn=fn)
        if name in ("plan", "status"):
            p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "sweep":
            p.add_argument(
                "--wait",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="follow the cells to their end (default: the executor's)",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except RunnerError as exc:
        text = str(exc)
        err.print("[red]error:[/]", end="\n" if "\n" in text else " ")
        err.print(text, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted: cells already submitted keep running; `runner status` shows them.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
