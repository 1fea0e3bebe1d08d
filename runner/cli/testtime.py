"""``runner predict`` and ``runner evaluate``: their arguments and what they do.

runner predict MATRIX (--cell ID|RUN_NAME | --best [GROUP] | --cells ID,...) -i DIR -o DIR
    [--checkpoint best|last] [--ensemble seeds|folds|cells] [--tta] [--save-probabilities]
    [--set predict.KEY=VALUE ...]
runner evaluate --pred DIR|PATTERN --labels DIR|PATTERN [--mask PATTERN] [--instances]
    [--voxel-size Z Y X] [--dataset-json F] [-o summary.json]
runner evaluate MATRIX [--best | --cells ID,...] [--checkpoint best|last] [--tta]

``--ensemble cells`` averages the probabilities of the cells named by ``--cells`` (any
architectures: the EM group's Phase 3), or with ``--best`` of the best cell of every report
group.
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
from runner.matrix.cells import Cell
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
        help="the cell with the best value of its selection metric (training.select; within "
        "GROUP, a report group); with --ensemble cells, the best cell of every group",
    )  # fmt: skip
    who.add_argument("--cells", help="with --ensemble cells: ids, id prefixes or run names")
    p.add_argument(
        "-i", "--input", type=Path, required=True,
        help="CASE_0000.nii.gz, ... (EM layouts: HDF5/TIFF stacks)",
    )  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True, help="CASE.nii.gz land here")
    p.add_argument(
        "--checkpoint", choices=select.CHECKPOINTS, default="best",
        help="the cell's best.pt (best val Dice: the default) or last.pt",
    )  # fmt: skip
    p.add_argument(
        "--ensemble", choices=(*select.ENSEMBLE_AXES, "cells"),
        help="average the probabilities of the cell's done seeds (or folds), or of the "
        "cells given (cells: any architectures)",
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
    e.add_argument(
        "--pred", type=Path,
        help="a folder of CASE.nii.gz predictions, or a glob pattern ('preds/vol*_im_pred.h5')",
    )  # fmt: skip
    e.add_argument(
        "--labels", type=Path,
        help="a folder of CASE.nii.gz references, or a glob pattern paired with --pred's by "
        "its wildcards ('test/vol*_vesicle_ins.h5')",
    )  # fmt: skip
    e.add_argument("--mask", help="a glob pattern of masks: only their voxels are scored")
    e.add_argument(
        "--instances", action="store_true",
        help="instance segmentations: adapted Rand error, VI, foreground Dice",
    )  # fmt: skip
    e.add_argument(
        "--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
        help="HDF5/TIFF stacks: voxel size in nm (else distances are in voxels)",
    )  # fmt: skip
    e.add_argument("--dataset-key", default="main", help="HDF5: the dataset to read")
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


def _predicted_cells(plan: Plan, args: argparse.Namespace) -> list[Cell]:
    states = plan.states()
    if args.ensemble == "cells":
        if args.cell is not None:
            raise RunnerError(
                "--ensemble cells: name its members with --cells A,B,... (any architectures), "
                "or take the best cell of every group with --best"
            )
        if args.cells:
            return select.named_cells(plan, args.cells, states)
        return select.best_per_group(plan, states)
    if args.cells:
        raise RunnerError("--cells names the members of --ensemble cells; one cell: --cell")
    if args.cell is not None:
        anchor = select.require_done(plan, select.find_cell(plan, args.cell), states)
    else:
        anchor = select.best_cell(plan, states, args.best or None)
    if args.ensemble:
        return select.siblings(plan, anchor, args.ensemble, states)
    return [anchor]


def predict(plan: Plan, args: argparse.Namespace, console: Console) -> int:
    cells = _predicted_cells(plan, args)
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
        cells = select.named_cells(plan, args.cells, states)
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
    instances = any(o.summary.get("task") == "em_instance" for o in outcomes)
    columns = ["cell", "group", "best val Dice", "test Dice"]
    columns += ["test adapted Rand error", "test VI"] if instances else ["test HD95", "test NSD"]
    for col in (*columns, "cases"):
        table.add_column(col)
    for o in outcomes:
        fg = o.summary.get("over_classes") or o.summary["foreground_mean"]
        best = states[o.member.cell.id].best_val_dice
        rest = (
            [_num(fg.get("adapted_rand_error")), _num(fg.get("voi"))]
            if instances
            else [_num(fg["HD95"], 2), _num(fg["NSD"])]
        )
        table.add_row(
            o.member.cell.run_name,
            select.group_of(plan, o.member.cell),
            _num(best),
            _num(fg["Dice"]),
            *rest,
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
        mask_pattern=args.mask,
        instances=args.instances,
        dataset_key=args.dataset_key,
        voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
    )
    try:
        summary = fn(request)
    except PredictInputError as err:
        raise RunnerError(str(err)) from None
    out = args.output or _pred_folder(args.pred) / "summary.json"
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out)  # a failed run above never touched an earlier summary
    for warning in summary.get("warnings", []):
        console.print(f"warning: {warning}", markup=False)
    if summary.get("task") == "em_instance":
        _print_instances(console, summary)
        console.print(f"wrote {out}")
        return 0
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


def _pred_folder(pred: Path) -> Path:
    """Where a summary goes by default: the predictions' folder (a pattern's folder)."""
    parts = pred.parts
    fixed = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    return Path(*parts[:fixed]) if fixed else Path(".")


INSTANCE_COLUMNS = {
    "adapted Rand error": "adapted_rand_error",
    "precision": "adapted_rand_precision",
    "recall": "adapted_rand_recall",
    "VI split": "voi_split",
    "VI merge": "voi_merge",
    "VI": "voi",
    "fg Dice": "Dice",
}


def _print_instances(console: Console, summary: dict[str, Any]) -> None:
    table = Table(
        title=f"{summary['n_cases']} cases: instance segmentation (inside the masks)",
        title_justify="left",
    )
    for col in ("case", *INSTANCE_COLUMNS):
        table.add_column(col)
    rows = [(c["case"], c["metrics"]["1"]) for c in summary["metric_per_case"]]
    for case, row in [*rows, ("mean", summary["foreground_mean"])]:
        table.add_row(case, *(_num(row[key]) for key in INSTANCE_COLUMNS.values()))
    console.print(table)


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"
