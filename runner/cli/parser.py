"""The ``runner`` argument parser: every command, its arguments and its help."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runner.sweep.selection import REASON_KINDS

Handler = Callable[[argparse.Namespace], int]

#: Before they show anything, plan and status reconcile the ledger with the executor: the
#: end of a job that ended without a word is written into its attempt (monitor.json), and
#: metrics that ended cells kept in their spool are uploaded to the tracking store.
RECONCILES = (
    " (first reconciles the ledger: writes the ends the executor knows of jobs that said "
    "nothing, and uploads the metrics ended cells spooled)"
)

COMMANDS = [
    ("plan", "show the cells of a matrix and their states" + RECONCILES),
    ("status", "show the states of a matrix's cells" + RECONCILES),
    ("sweep", "submit the cells that never ran"),
    ("resume", "resubmit failed, cancelled and lost cells from their checkpoint"),
    (
        "rerun",
        "train ended cells again from scratch (done ones too: after fixing a recipe), each "
        "in a new MLflow run; the earlier run is kept, tagged superseded",
    ),
    ("cancel", "stop queued, submitted and running cells"),
    ("report", "compare groups over seeds: mean ± std, axis effects, plots"),
    ("sync", "upload metrics kept locally while the tracking server was down"),
]


def build_parser(description: str, handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """``handlers``: command name -> the function that runs it (plan, status, sweep,
    resume, cancel, report, sync, predict, evaluate)."""
    import shtab

    import runner

    parser = argparse.ArgumentParser(
        prog="runner", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"runner {runner.__version__}")
    # `eval "$(runner --print-completion bash)"` (README: shell completion).
    shtab.add_argument_to(parser, ["--print-completion"], help="print a shell completion script")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("matrix", type=Path, help="the matrix YAML file")
        p.set_defaults(fn=handlers[name], command=name)
        if name in ("plan", "status"):
            _table_args(p, watch=name == "status")
        if name in ("sweep", "resume", "rerun"):
            _submit_args(p)
        if name in ("sweep", "rerun"):
            p.add_argument(
                "--where",
                action="append",
                metavar="KEY=VALUE",
                help="only cells with this axis value (repeat for several: all must hold), "
                "e.g. --where model=unet --where seed=0",
            )
        if name == "sweep":
            p.add_argument(
                "--ignore-other-ledgers",
                action="store_true",
                help="train cells again that are done in another ledger of this matrix (one "
                "swept from another directory or with another sweep_dir); without it the "
                "sweep refuses and names that ledger",
            )
        if name == "resume":
            p.add_argument(
                "--only",
                metavar="REASON,...",
                help="only cells that ended for these reasons (comma-separated): "
                + ", ".join(REASON_KINDS),
            )
        if name == "report":
            _report_args(p)
        if name in ("sweep", "resume", "cancel", "rerun"):
            p.add_argument(
                "--cells", help="only these cells: ids, id prefixes or run names, comma-separated"
            )
        if name == "cancel":
            p.add_argument(
                "--grace",
                type=float,
                default=30.0,
                help="seconds a running cell gets to finish its checkpoint and stop before "
                "it is killed (default 30)",
            )
    logs = _cell_command(
        sub,
        handlers["logs"],
        "logs",
        "print a cell's job log (its training lines, warnings, a failure's traceback)",
        "print a cell's job log: the .out (a line per epoch or logging window) and .err files "
        "of its last attempt (or --attempt N), every rank of a DDP cell",
    )
    logs.add_argument("--attempt", type=int, help="that attempt (1, 2, ...); default: the last")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing while the cell runs"
    )
    _cell_command(
        sub,
        handlers["show"],
        "show",
        "print a cell's composed config, as its job will see it",
        "print a cell's config as the recipe composes it (the matrix's base, then the cell's "
        "overrides), as Hydra's --cfg job prints it",
    )
    from runner.cli.testtime import add_parsers

    add_parsers(sub, handlers["predict"], handlers["evaluate"])
    from runner.cli.import_sweep import add_parser as add_import

    add_import(sub, handlers["import"])
    from runner.cli.profile_view import add_parser as add_profile

    add_profile(sub, handlers["profile"])
    return parser


def _cell_command(
    sub: Any, handler: Handler, name: str, text: str, description: str
) -> argparse.ArgumentParser:
    """A command about one cell of a matrix: ``runner NAME MATRIX CELL``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=text, description=description)
    p.add_argument("matrix", type=Path, help="the matrix YAML file")
    p.add_argument("cell", help="a cell id, an id prefix (4+ characters) or a run name")
    p.set_defaults(fn=handler, command=name)
    return p


def _table_args(p: argparse.ArgumentParser, watch: bool) -> None:
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument(
        "--format",
        choices=("table", "json", "parquet"),
        default="table",
        help="a table (default), JSON for scripts, or a Parquet file (-o) for pandas/duckdb",
    )
    p.add_argument("-o", "--output", help="file for json/parquet output")
    p.add_argument(
        "--all",
        action="store_true",
        help="every cell's row, also for a big matrix (default: above 50 cells, a summary "
        "and the running and failed cells first)",
    )
    if watch:
        p.add_argument(
            "--watch",
            action="store_true",
            help="refresh until no cell is in flight (Ctrl-C or SIGTERM stops watching)",
        )
        p.add_argument(
            "--interval",
            type=float,
            default=5.0,
            metavar="S",
            help="with --watch: seconds between refreshes (default 5)",
        )


def _submit_args(p: argparse.ArgumentParser) -> None:
    from runner.executors.options import OPTIONS

    p.add_argument(
        "--executor",
        choices=sorted(OPTIONS),
        help="run the cells on this executor instead of the matrix's (ids unchanged)",
    )
    p.add_argument("--slots", type=int, help="with --executor local: cells at once")
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="follow the cells to their end (default: the executor's)",
    )


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=("table", "csv", "json", "parquet", "md", "latex"),
        default="table",
        help="what goes to stdout (default: tables); the files are written in any case; md "
        "and latex print the ranking table for a paper (ranking.md / ranking.tex)",
    )
    p.add_argument(
        "--html",
        action="store_true",
        help="also write report.html: the whole report in one self-contained file",
    )
    p.add_argument(
        "--delta",
        type=float,
        help="a difference of Dice worth detecting: the seeds each comparison needs for it "
        "(80%% power, α = 0.05), beside those for the difference seen",
    )
    p.add_argument(
        "--budget-factor",
        type=float,
        default=1.5,
        help="flag compared arms whose tuning budgets (trials, epochs, GPU-hours) differ by "
        "more than this factor (default 1.5)",
    )
    p.add_argument(
        "--remedied",
        choices=("mark", "exclude", "separate"),
        default="mark",
        help="cells that trained with out-of-memory remedies (on_oom): mark: counted in their "
        "groups, listed under the table (default); exclude: left out; separate: compared as "
        "groups of their own (`unet_adamw (remedied: halve_batch)`)",
    )
    p.add_argument("--baseline", help="a group label: per-class deltas against it")
    p.add_argument(
        "--baseline-csv",
        help="a CSV of per-class statistics (class, dice_mean[, dice_std, n]) to "
        "compare every group's per-class Dice with (Welch's t-test where n is known); "
        "default: the matrix's report.baseline_csv",
    )
    p.add_argument(
        "--baseline-n",
        type=int,
        help="runs behind each CSV row, for a CSV without an n column",
    )
    p.add_argument(
        "--baseline-std-ddof",
        type=int,
        choices=(0, 1),
        help="1: the CSV's dice_std is the sample std (default); 0: numpy's np.std",
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
