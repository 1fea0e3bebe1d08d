"""``runner``: plan, sweep, resume, cancel and inspect experiment matrices.

    runner plan MATRIX [--json]                   the cells, their run names and states
    runner sweep MATRIX [--no-wait]               submit the cells that never ran; follow them
    runner status MATRIX [--format F] [-o FILE]   state, attempts, best val Dice per cell
    runner resume MATRIX [--only R,..] [--cells ID,..]   retry failed/cancelled/lost cells
    runner cancel MATRIX [--cells ID,..]          stop queued, submitted and running cells
    runner report MATRIX [--baseline G] [--format F]   mean ± std over seeds, axis effects
    runner sync MATRIX                            upload metrics kept while MLflow was down
    runner predict MATRIX (--cell C | --best [G]) -i DIR -o DIR   label maps for new images
    runner evaluate --pred DIR --labels DIR | MATRIX    summary.json; test metrics per cell

User errors print one clear message per problem and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.errors import RunnerError

# Not a terminal (pipes, CI logs): wide enough that tables don't truncate ids and names.
# emoji=False: ':100:' in 'matrix.yaml:100:' must not become an emoji.
console = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)


def _plan(args: argparse.Namespace) -> Any:
    from runner.plan import make_plan
    from runner.sweep.preflight import check_data, run_elsewhere, tracking_warnings

    plan = make_plan(args.matrix)
    for w in plan.expansion.warnings:
        err.print("[yellow]warning:[/]", end=" ")
        err.print(w.render(plan.matrix.file), markup=False)
    if getattr(args, "executor", None):
        run_elsewhere(plan, args.executor, args.slots)
    if getattr(args, "command", None) in ("plan", "sweep", "resume"):
        for warning in [*check_data(plan, args.command != "plan"), *tracking_warnings(plan)]:
            err.print("[yellow]warning:[/]", end=" ")
            err.print(warning, markup=False)
    return plan


def _reconcile(plan: Any) -> None:
    """Write into the ledger the ends the executor knows of and the cells did not say (a
    SLURM job that died before its cell started, an admin's scancel): one query in all."""
    from runner.sweep.reconcile import reconcile

    if warning := reconcile(plan):
        err.print("[yellow]warning:[/]", end=" ")
        err.print(warning, markup=False)


def cmd_plan(args: argparse.Namespace) -> int:
    from runner.sweep.progress import cell_table, summary

    plan = _plan(args)
    _reconcile(plan)
    fmt = "json" if getattr(args, "json", False) else getattr(args, "format", "table")
    if fmt in ("json", "parquet"):
        from runner.report.tables import rows, write_parquet

        if fmt == "parquet":
            out = Path(args.output or f"{plan.matrix.spec.name}_cells.parquet")
            try:
                write_parquet(plan, out)
            except OSError as exc:
                raise RunnerError(f"cannot write {out}: {exc.strerror or exc}") from None
            console.print(f"wrote {len(plan.cells)} rows to {out}")
        else:
            text = json.dumps(
                {"matrix": plan.matrix.spec.name, "count": len(plan.cells), "cells": rows(plan)},
                indent=1,
                default=str,
            )
            if args.output:
                Path(args.output).write_text(text)
            else:
                print(text)
        return 0
    states = plan.states()
    spec = plan.matrix.spec
    title = (
        f"{spec.name}: {len(plan.cells)} cells, recipe {spec.recipe}, executor {spec.executor.kind}"
    )
    console.print(cell_table(title, plan.cells, states))
    console.print(f"{len(plan.cells)} cells: {summary(states)}")
    if plan.search is not None:
        console.print(plan.search.describe())
    if spec.executor.kind == "slurm":
        _slurm_summary(states)
    from runner.sweep.background import running_scheduler

    if sched := running_scheduler(plan):
        console.print(f"background scheduler: pid {sched['pid']}, log {sched['log']}")
    return 0


def _slurm_summary(states: dict[str, Any]) -> None:
    """What SLURM itself says of the matrix's jobs: one squeue and one sacct call in all."""
    from collections import Counter

    from runner.executors.slurm.cluster import query_states

    ids = [s.job_id for s in states.values() if s.job_id and s.state in ("submitted", "running")]
    if not ids:
        return
    slurm, warning = query_states(ids)
    counts = Counter(slurm.values())
    console.print("SLURM: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if warning:
        err.print("[yellow]warning:[/]", end=" ")
        err.print(warning, markup=False)


def _submit(args: argparse.Namespace, choose: Any = None, verb: str = "sweep") -> int:
    from runner.sweep.progress import LiveProgress, summary
    from runner.sweep.submit import submit

    plan = _plan(args)
    _reconcile(plan)
    spec = plan.matrix.spec
    console.print(f"matrix {spec.name}: {len(plan.cells)} cells, executor {spec.executor.kind}")
    outcome = submit(plan, wait=args.wait, observe=LiveProgress(console, plan.cells), choose=choose)
    skipped = ", ".join(f"{n} {s}" for s, n in sorted(outcome.skipped.items()))
    if not outcome.submitted:
        what = "nothing new to submit" if verb == "sweep" else "nothing to resume"
        console.print(f"{what}: no cell needs it ({skipped}).")
        if outcome.lost_race:
            console.print(f"{len(outcome.lost_race)} cells were claimed by a concurrent sweep.")
        if verb == "sweep" and (outcome.skipped.get("failed") or outcome.skipped.get("diverged")):
            console.print(
                "failed cells are retried by `runner resume` (not by sweep), so that a "
                "sweep never repeats work by accident."
            )
    elif outcome.scheduler:
        console.print(
            f"handed {len(outcome.submitted)} cells to a background scheduler "
            f"(pid {outcome.scheduler['pid']}), which keeps the executor's slots busy"
            + (f"; left {sum(outcome.skipped.values())} alone ({skipped})" if skipped else "")
        )
        console.print(f"  its log: {outcome.scheduler['log']}")
        console.print("follow the cells with `runner status`; stop them with `runner cancel`")
    else:
        console.print(
            f"submitted {len(outcome.submitted)} cells"
            + (
                f", left {sum(outcome.skipped.values())} alone ({skipped})"
                if outcome.skipped
                else ""
            )
        )
        if not outcome.followed:
            for cid, job in outcome.job_ids.items():
                console.print(f"  {cid}  job {job}")
            console.print("the cells run on; follow them with `runner status` (or sweep --wait)")
    states = plan.states()
    console.print(f"states: {summary(states)}")
    uri = plan.tracking_uri
    console.print(f"MLflow store: {uri}  (experiment '{spec.name}')")
    if uri.startswith(("sqlite:", "file:")):
        ui = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        # `make ui` serves the repository's default store only; say it only when it is this one.
        default = f"sqlite:///{(Path(__file__).resolve().parents[1] / 'mlruns.db')}"
        console.print(
            f"open the UI with: make ui   (or: {ui})"
            if uri == default
            else f"open the UI with: {ui}"
        )
    mine = [states[c] for c in outcome.submitted]
    return 1 if any(s.state in ("failed", "diverged", "cancelled") for s in mine) else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    return _submit(args)


def cmd_resume(args: argparse.Namespace) -> int:
    from runner.sweep.selection import for_resume, parse_list

    only, ids = parse_list(args.only), parse_list(args.cells)
    if args.cells is not None and not ids:
        raise RunnerError("--cells: give at least one cell id")
    return _submit(args, lambda cells, states: for_resume(cells, states, only, ids), "resume")


def cmd_cancel(args: argparse.Namespace) -> int:
    from runner.sweep.cancel import cancel
    from runner.sweep.selection import parse_list

    plan = _plan(args)
    if args.grace < 0:
        raise RunnerError(f"--grace: give seconds >= 0, not {args.grace}")
    outcome = cancel(plan, parse_list(args.cells), args.grace, say=console.print)
    if not outcome.cancelled:
        console.print("nothing to cancel: no cell is queued, submitted or running.")
        return 0
    killed = f", {len(outcome.killed)} killed after {args.grace:g} s" if outcome.killed else ""
    console.print(
        f"cancelled {len(outcome.cancelled)} cells "
        f"({len(outcome.signalled)} running jobs signalled{killed})"
    )
    if outcome.still_running:
        console.print(
            f"[red]still running after the kill:[/red] {', '.join(outcome.still_running)} "
            "(the engine or cluster did not answer); `runner status` shows them cancelling "
            "until they stop; run `runner cancel` again to retry"
        )
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from runner.report import publish
    from runner.report import search as search_report
    from runner.report.render import print_report

    plan = _plan(args)
    baseline_csv = Path(args.baseline_csv) if args.baseline_csv else None
    report, groups = publish.build(plan, args.baseline, baseline_csv)
    out_dir = Path(args.output) if args.output else plan.ledger.root / "report"
    report.files = publish.write(report, groups, out_dir, args.format)
    if not args.no_mlflow and report.groups:
        report.summary_run_id = publish.log_summary(plan, report)
    if args.format == "json":
        print((out_dir / "report.json").read_text())
    elif args.format == "csv":
        print((out_dir / "groups.csv").read_text(), end="")
    elif args.format == "table":
        print_report(console, report, plan.matrix.spec.name, args.baseline)
        search_report.render(console, report.search)
    # Machine-readable output owns stdout (`report --format csv > groups.csv`): status on stderr.
    say = console if args.format == "table" else err
    if not report.groups:
        say.print("no cell is done yet: nothing to compare.")
    say.print(
        f"report files in {out_dir}"
        + (f"; logged to MLflow run {report.summary_run_id}" if report.summary_run_id else "")
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from runner.sweep.sync import sync

    plan = _plan(args)
    out = sync(plan)
    if not out.cells:
        console.print("nothing to sync: no cell kept metrics locally.")
        return 0
    console.print(
        f"synced {len(out.cells)} cells: {out.metrics_sent} metric values sent, "
        f"{out.metrics_present} already there, {out.runs_ended} runs ended"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from runner.testtime.commands import predict

    return predict(_plan(args), args, console)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from runner.testtime.commands import evaluate

    return evaluate(_plan(args) if args.matrix else None, args, console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = [
        ("plan", cmd_plan, "show the cells of a matrix and their states"),
        ("status", cmd_plan, "show the states of a matrix's cells"),
        ("sweep", cmd_sweep, "submit the cells that never ran"),
        ("resume", cmd_resume, "resubmit failed, cancelled and lost cells from their checkpoint"),
        ("cancel", cmd_cancel, "stop queued, submitted and running cells"),
        ("report", cmd_report, "compare groups over seeds: mean ± std, axis effects, plots"),
        ("sync", cmd_sync, "upload metrics kept locally while the tracking server was down"),
    ]
    for name, fn, text in commands:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("matrix", type=Path, help="the matrix YAML file")
        p.set_defaults(fn=fn, command=name)
        if name in ("plan", "status"):
            p.add_argument("--json", action="store_true", help="same as --format json")
            p.add_argument("--format", choices=("table", "json", "parquet"), default="table")
            p.add_argument("-o", "--output", help="file for json/parquet output")
        if name in ("sweep", "resume"):
            from runner.executors import KINDS

            p.add_argument(
                "--executor",
                choices=sorted(KINDS),
                help="run the cells on this executor instead of the matrix's (ids unchanged)",
            )
            p.add_argument("--slots", type=int, help="with --executor local: cells at once")
            p.add_argument(
                "--wait",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="follow the cells to their end (default: the executor's)",
            )
        if name == "resume":
            p.add_argument(
                "--only",
                help="only cells that failed for these reasons, e.g. "
                "oom,timeout (also: exception, lost, cancelled, diverged)",
            )
        if name == "report":
            p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
            p.add_argument("--baseline", help="a group label: per-class deltas against it")
            p.add_argument(
                "--baseline-csv",
                help="a CSV of per-class statistics (class, dice_mean[, dice_std, n]) to "
                "compare every group's per-class Dice with",
            )
            p.add_argument(
                "-o",
                "--output",
                help="directory for the report files (default: sweeps/<matrix>/report)",
            )
            p.add_argument(
                "--no-mlflow",
                action="store_true",
                help="don't log the report to MLflow as a summary run",
            )
        if name in ("resume", "cancel"):
            p.add_argument("--cells", help="only these cells: ids, id prefixes or run names")
        if name == "cancel":
            p.add_argument(
                "--grace",
                type=float,
                default=30.0,
                help="seconds a running cell gets to finish its checkpoint and stop before "
                "it is killed (default 30)",
            )
    from runner.testtime.commands import add_parsers

    add_parsers(sub, cmd_predict, cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow's own INFO lines (store creation, migrations) are not the runner's output; it
    # reads the variable when imported (lazily, later), the logger level covers an earlier one.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        try:
            return int(args.fn(args))
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            # Output files the user named (-o) and directories they pointed us at.
            raise RunnerError(f"{exc.filename}: {exc.strerror}") from None
    except RunnerError as exc:
        text = str(exc)
        err.print("[red]error:[/]", end="\n" if "\n" in text else " ")
        err.print(text, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted: cells already submitted keep running; `runner status` shows them.")
        return 130
    except BrokenPipeError:
        # `runner status ... | head`: the reader is gone; say nothing more, like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
