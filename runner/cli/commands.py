"""``runner``: plan, sweep, resume, cancel and inspect experiment matrices.

    runner plan MATRIX [--all] [--json]           the cells, their run names and states
    runner sweep MATRIX [--no-wait]               submit the cells that never ran; follow them
    runner status MATRIX [--watch] [--all] [--format F]   states, attempts, best val Dice
    runner resume MATRIX [--only R,..] [--cells ID,..]   retry failed/cancelled/lost cells
    runner cancel MATRIX [--cells ID,..]          stop queued, submitted and running cells
    runner report MATRIX [--baseline G] [--format F]   mean ± std over seeds, axis effects
    runner sync MATRIX                            upload metrics kept while MLflow was down
    runner logs MATRIX CELL [--attempt N] [-f]    what a cell's job printed
    runner rerun MATRIX (--cells ID,.. | --where K=V)   train ended cells again, new runs
    runner show MATRIX CELL                       a cell's composed config
    runner predict MATRIX (--cell C | --best [G]) -i DIR -o DIR   label maps for new images
    runner evaluate --pred DIR --labels DIR | MATRIX    summary.json; test metrics per cell
    runner import SOURCE [--recipe R] [-o FILE]   a W&B / Orion / Hydra sweep as a matrix
    runner profile MATRIX [--steps N] [--cells ..]   a few steps per cell shape: time, memory, cost

User errors print one clear message per problem and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from runner.cli.common import _plan, _reconcile, _warn, console, err
from runner.errors import RunnerError


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _plan(args)
    _reconcile(plan)
    fmt = "json" if getattr(args, "json", False) else getattr(args, "format", "table")
    watching = getattr(args, "watch", False)
    if watching and fmt != "table":
        raise RunnerError(f"--watch refreshes the table: it does not combine with --format {fmt}")
    if watching and not args.interval > 0:
        raise RunnerError(f"--interval: give seconds > 0, not {args.interval:g}")
    if fmt in ("json", "parquet"):
        from runner.cli.export import rows, write_parquet

        if fmt == "parquet":
            out = Path(args.output or f"{plan.matrix.spec.name}_cells.parquet")
            try:
                write_parquet(plan, out)
            except OSError as exc:
                raise RunnerError(f"cannot write {out}: {exc.strerror or exc}") from None
            console.print(f"wrote {len(plan.cells)} rows to {out}")
        else:
            from runner.report.estimate import overview
            from runner.sweep.reconcile import accounting

            view, hours = overview(plan, accounting=accounting(plan))
            if view["warning"]:
                _warn(view["warning"])
            text = json.dumps(
                {
                    "matrix": plan.matrix.spec.name,
                    "count": len(plan.cells),
                    "gpu_hours": view,
                    "cells": rows(plan, hours),
                },
                indent=1,
                default=str,
            )
            if args.output:
                Path(args.output).write_text(text)
            else:
                print(text)
        return 0
    from runner.cli import status

    see_all = f"`runner {args.command} {args.matrix} --all` (or --format json)"
    if watching:
        return status.watch(plan, args.matrix, console, args.interval, args.all, see_all, _warn)
    states = plan.states()
    status.show(console, status.view(plan, states, console.width, args.all, see_all, _warn))
    from runner.report.estimate import overview, overview_lines
    from runner.sweep.reconcile import accounting

    view, _ = overview(plan, states, accounting(plan))
    for line in overview_lines(view):
        console.print(line, markup=False)
    if view["warning"]:
        _warn(view["warning"])
    from runner.cli.logs import failed_lines

    if failed := failed_lines(plan, states):
        console.print("failed cells:", markup=False)
        for line in failed:
            console.print(line, markup=False, soft_wrap=True)
    if args.command == "plan":
        from runner.sweep.preflight import describe_ledger, describe_store

        console.print(describe_ledger(plan), markup=False)
        console.print(describe_store(plan), markup=False)
    return 0


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
    from runner.cli.report_view import print_held_out, print_report
    from runner.cli.trust_view import print_missing, write_extras
    from runner.report import publish
    from runner.report import search as search_report
    from runner.report.outputs import keep_only

    plan = _plan(args)
    from runner.report.baseline import csv_baseline
    from runner.sweep.reconcile import accounting

    baseline_csv = csv_baseline(
        plan, args.baseline_csv, args.baseline_n, args.baseline_std_ddof, args.baseline
    )
    if args.budget_factor is not None and not args.budget_factor >= 1:
        raise RunnerError(f"--budget-factor {args.budget_factor}: a factor >= 1 (e.g. 1.5)")
    report, groups = publish.build(
        plan,
        args.baseline,
        baseline_csv,
        accounting(plan),
        args.delta,
        args.budget_factor,
        remedied=args.remedied,
    )
    out_dir = Path(args.output) if args.output else plan.ledger.root / "report"
    if not report.groups:  # nothing to compare: nothing is written or logged
        print_missing(err, report)
        err.print(f"no cell is done yet: nothing to report (no file written to {out_dir}).")
        return 1
    if warning := publish.code_warning(report, plan.matrix.file):
        _warn(warning)
    report.files = publish.write(report, groups, out_dir, args.format)
    report.files += write_extras(report, groups, out_dir, args, plan)
    keep_only(out_dir, report.files)  # an earlier report's files that this one lacks go
    logged_before = None
    if not args.no_mlflow:
        logged_before = publish.earlier_report_run(plan, report)
        if logged_before is None:
            report.summary_run_id = publish.log_summary(plan, report)
    if args.format == "json":
        print((out_dir / "report.json").read_text())
    elif args.format == "csv":
        print((out_dir / "groups.csv").read_text(), end="")
    elif args.format in ("md", "latex"):
        print((out_dir / ("ranking.md" if args.format == "md" else "ranking.tex")).read_text())
    elif args.format == "table":
        print_report(console, report, plan.matrix.spec.name, args.baseline)
        search_report.render(console, report.search)
        print_held_out(console, report.nested)
    # Machine-readable output owns stdout (`report --format csv > groups.csv`): status on stderr.
    say = console if args.format == "table" else err
    say.print(
        f"report files in {out_dir}"
        + (f"; logged to MLflow run {report.summary_run_id}" if report.summary_run_id else "")
        + (
            f"; unchanged since MLflow run {logged_before}: not logged again"
            if logged_before
            else ""
        )
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
    from runner.cli.testtime import predict

    return predict(_plan(args), args, console)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from runner.cli.testtime import evaluate

    return evaluate(_plan(args) if args.matrix else None, args, console)


def cmd_logs(args: argparse.Namespace) -> int:
    from runner.cli import logs

    return logs.main(_plan(args), args.cell, args.attempt, args.follow)


def cmd_show(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from runner.sweep.selection import by_ids

    plan = _plan(args)
    (cell,) = by_ids(plan.cells, [args.cell])
    cfg = plan.recipe.compose([*plan.matrix.spec.base, *cell.overrides])
    print(f"# cell {cell.id} ({cell.run_name}) of {plan.matrix.file}")
    print(OmegaConf.to_yaml(cfg, resolve=False), end="")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from runner.cli.import_sweep import run

    return run(args)


def cmd_profile(args: argparse.Namespace) -> int:
    from runner.cli.profile_view import run

    return run(_plan(args), args, console, _warn)


def build_parser() -> argparse.ArgumentParser:
    from runner.cli.parser import build_parser as build
    from runner.cli.submitting import cmd_rerun, cmd_resume, cmd_sweep

    commands = {"plan": cmd_plan, "status": cmd_plan, "sweep": cmd_sweep, "resume": cmd_resume}
    commands |= {"cancel": cmd_cancel, "report": cmd_report, "sync": cmd_sync}
    commands |= {"predict": cmd_predict, "evaluate": cmd_evaluate, "import": cmd_import}
    commands |= {"logs": cmd_logs, "rerun": cmd_rerun, "show": cmd_show}
    commands |= {"profile": cmd_profile}
    return build(__doc__ or "", commands)


def main(argv: list[str] | None = None) -> int:
    # MLflow's own INFO lines (store creation, migrations) are not the runner's output; it
    # reads the variable when imported (lazily, later), the logger level covers an earlier one.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)  # --help, --print-completion print here
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
