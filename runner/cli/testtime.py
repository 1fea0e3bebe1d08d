"""``runner predict`` and ``runner evaluate``: their arguments and what they do.

runner predict MATRIX (--cell ID|RUN_NAME | --best [GROUP]) -i DIR -o DIR
    [--checkpoint best|last] [--ensemble seeds|folds] [--tta] [--save-probabilities]
    [--set predict.KEY=VALUE ...]
runner evaluate --pred DIR --labels DIR [--dataset-json F] [-o summary.json]
runner evaluate MATRIX [--best | --cells ID,...] [--checkpoint best|last] [--tta]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from recipes.contract import EvaluateRequest, PredictInputError, PredictRequest
from runner.errors import RunnerError
from runner.plan import Plan
from runner.testtime import select
from runner.testtime.matrix_eval import evaluate_cells


def add_parsers(
    sub: Any, predict_fn: Callable[[argparse.Namespace], int], evaluate_fn: Callable[..., int]
) -> None:
    text = "predict new images with a trained cell, the best cell, or an ensemble"
    p = sub.add_parser("predict", help=text, description=text)
    p.add_argument("matrix", type=Path, help="the matrix YAML file")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--cell", help="a cell id, id prefix or run name")
    who.add_argument(
        "--best", nargs="?", const="", metavar="GROUP",
        help="the cell with the best validation Dice (within GROUP, a report group)",
    )  # fmt: skip
    p.add_argument("-i", "--input", type=Path, required=True, help="CASE_0000.nii.gz, ...")
    p.add_argument("-o", "--output", type=Path, required=True, help="CASE.nii.gz land here")
    p.add_argument(
        "--checkpoint", choices=select.CHECKPOINTS, default="best",
        help="the cell's best.pt (best val Dice: the default) or last.pt",
    )  # fmt: skip
    p.add_argument(
        "--ensemble", choices=tuple(select.ENSEMBLE_AXES),
        help="average the probabilities of the cell's done seeds (or folds)",
    )  # fmt: skip
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument("--save-probabilities", action="store_true", help="also CASE.npz")
    p.add_argument(
        "--set", action="append", default=[], metavar="predict.KEY=VALUE",
        help="a predict setting, e.g. predict.sw_overlap=0.75 (repeatable)",
    )  # fmt: skip
    p.set_defaults(fn=predict_fn)

    text = "score predictions (nnU-Net summary.json), or a matrix's cells on its test split"
    e = sub.add_parser("evaluate", help=text, description=text)
    e.add_argument("matrix", type=Path, nargs="?", help="score its done cells on data.test")
    e.add_argument("--pred", type=Path, help="a folder of CASE.nii.gz predictions")
    e.add_argument("--labels", type=Path, help="a folder of CASE.nii.gz references")
    e.add_argument("--dataset-json", type=Path, help="label names, file ending, ignore label")
    e.add_argument("-o", "--output", type=Path, help="default: PRED/summary.json")
    e.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance")
    e.add_argument("--recipe", default="segmentation", help="whose EVALUATE scores folders")
    e.add_argument("--best", action="store_true", help="only the best cell of each group")
    e.add_argument("--cells", help="only these cells: ids, id prefixes or run names")
    e.add_argument(
        "--checkpoint", choices=select.CHECKPOINTS, default="best",
        help="each cell's best.pt (best val Dice: the default) or last.pt",
    )  # fmt: skip
    e.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    e.set_defaults(fn=evaluate_fn)


def _settings(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise RunnerError(f"--set: expected predict.KEY=VALUE, got {pair!r}")
        out[key.removeprefix("predict.")] = value
    return out


def predict(plan: Plan, args: argparse.Namespace, console: Console) -> int:
    states = plan.states()
    if args.cell is not None:
        anchor = select.require_done(plan, select.find_cell(plan, args.cell), states)
    else:
        anchor = select.best_cell(plan, states, args.best or None)
    cells = [anchor]
    if args.ensemble:
        cells = select.siblings(plan, anchor, args.ensemble, states)
    members = select.members(plan, cells, args.checkpoint)
    request = PredictRequest(
        models=[m.ref for m in members],
        output_dir=args.output,
        input_dir=args.input,
        tta=args.tta,
        save_probabilities=args.save_probabilities,
        settings=_settings(args.set),
    )
    fn = select.recipe_entry(plan.recipe.name, "PREDICT")
    try:
        result = fn(request)
    except PredictInputError as err:
        raise RunnerError(str(err)) from None
    names = ", ".join(m.cell.run_name for m in members)
    what = f"ensemble of {len(members)} ({names})" if len(members) > 1 else names
    console.print(
        f"predicted {len(result.cases)} cases with {what}, {args.checkpoint}.pt"
        f"{', TTA' if args.tta else ''}: label maps in {args.output}"
    )
    return 0


def evaluate(plan: Plan | None, args: argparse.Namespace, console: Console) -> int:
    folders = args.pred is not None or args.labels is not None
    if plan is not None and folders:
        raise RunnerError("give MATRIX (its cells on data.test) or --pred/--labels, not both")
    if plan is None:
        if args.pred is None or args.labels is None:
            raise RunnerError(
                "give MATRIX (score its done cells on data.test) or both --pred DIR and "
                "--labels DIR (score a folder of predictions)"
            )
        return _evaluate_folders(args, console)
    states = plan.states()
    if args.cells and args.best:
        raise RunnerError("give --best or --cells, not both")
    if args.cells:
        ids = [x.strip() for x in args.cells.split(",") if x.strip()]
        found = [select.find_cell(plan, i, "--cells") for i in ids]
        cells = [select.require_done(plan, c, states) for c in found]
    elif args.best:
        cells = select.best_per_group(plan, states)
    else:
        cells = [c for c in plan.cells if states[c.id].state == "done"]
    members = select.members(plan, cells, args.checkpoint)
    outcomes = evaluate_cells(plan, members, tta=args.tta, which=args.checkpoint, say=console.print)
    table = Table(
        title=f"{plan.matrix.spec.name}: test split ({args.checkpoint}.pt"
        f"{', TTA' if args.tta else ''}); cells chosen on validation only",
        title_justify="left",
    )
    for col in ("cell", "group", "best val Dice", "test Dice", "test HD95", "test NSD", "cases"):
        table.add_column(col)
    for o in outcomes:
        fg = o.summary.get("over_classes") or o.summary["foreground_mean"]
        best = states[o.member.cell.id].best_val_dice
        table.add_row(
            o.member.cell.run_name,
            select.group_of(plan, o.member.cell),
            _num(best),
            _num(fg["Dice"]),
            _num(fg["HD95"], 2),
            _num(fg["NSD"]),
            str(o.summary["n_cases"]),
        )
    console.print(table)
    console.print("test_* metrics logged into each cell's MLflow run; summaries under its test/")
    return 0


def _evaluate_folders(args: argparse.Namespace, console: Console) -> int:
    fn = select.recipe_entry(args.recipe, "EVALUATE")
    request = EvaluateRequest(
        pred_dir=args.pred,
        labels_dir=args.labels,
        dataset_json=args.dataset_json,
        tolerance_mm=args.tolerance_mm,
    )
    try:
        summary = fn(request)
    except PredictInputError as err:
        raise RunnerError(str(err)) from None
    out = args.output or args.pred / "summary.json"
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out)  # a failed run above never touched an earlier summary
    for warning in summary.get("warnings", []):
        console.print(f"warning: {warning}", markup=False)
    table = Table(title=f"{summary['n_cases']} cases: mean over cases", title_justify="left")
    for col in ("label", "Dice", "IoU", "HD95 (mm)", "NSD"):
        table.add_column(col)
    for value, row in summary["mean"].items():
        name = summary["labels"].get(value, value)
        table.add_row(
            f"{value} {name}", _num(row["Dice"]), _num(row["IoU"]), _num(row["HD95"], 2),
            _num(row["NSD"]),
        )  # fmt: skip
    fg = summary["foreground_mean"]
    table.add_row(
        "foreground mean", _num(fg["Dice"]), _num(fg["IoU"]), _num(fg["HD95"], 2), _num(fg["NSD"])
    )
    console.print(table)
    console.print(f"wrote {out}")
    return 0


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"
