"""``runner import SOURCE --recipe NAME [-o FILE]``: the argparse wiring and the command.

``add_parser(sub, fn)`` adds the subcommand to ``runner``'s parser; ``run(args)`` imports,
writes the matrix (stdout without ``-o``), prints warnings and unmapped keys on stderr and
returns the exit code: 0 written (warnings may remain), 1 written but ``runner plan``
refuses it as written (its problems are printed), 2 the source can't be imported (one
line: file, line, key), or with ``--strict`` a key is unmapped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from runner.errors import RunnerError
from runner.importers import FORMATS, import_sweep

HELP = "turn a W&B sweep, an Oríon experiment or a Hydra multirun into a matrix"
EPILOG = """examples:
  runner import sweep.yaml --recipe segmentation -o matrix/em_sweep.yaml
  runner import hpo.py --base data=isles24 -o matrix/meshnet_hpo.yaml      # Oríon
  runner import "python train.py -m model=unet,segresnet optimizer.lr=1e-3,3e-4 seed=0,1,2"
  runner import sweep.yaml --map model.dropout=model.dropout_prob --metric val_loss
"""


def add_parser(sub: argparse._SubParsersAction, fn: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(
        "import",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        help="a W&B sweep (YAML/JSON), an Oríon experiment (YAML/JSON, a dict literal, or "
        "Python with create_experiment), a Hydra sweeper config, or a Hydra multirun "
        "command line in quotes",
    )
    p.add_argument("--recipe", default="segmentation", help="the recipe (default segmentation)")
    p.add_argument("-o", "--output", type=Path, help="the matrix file (default: stdout)")
    p.add_argument("--format", choices=FORMATS, default="auto", help="default: auto")
    p.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a Hydra override for every cell, e.g. data=isles24 (repeatable)",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SOURCE=KEY",
        help="map a source key to a recipe key, e.g. channels=model.width (repeatable)",
    )
    p.add_argument("--metric", help="rank by this metric instead of the source's")
    p.add_argument("--trials", type=int, help="trials per point (default: the source's, or 20)")
    p.add_argument("--name", help="the matrix name (default: -o's stem, else the source's)")
    p.add_argument("--force", action="store_true", help="replace an existing -o file")
    p.add_argument("--strict", action="store_true", help="exit 2 if any key is unmapped")
    p.set_defaults(fn=fn, command="import")


def _maps(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise RunnerError(f"--map {item!r}: expected SOURCE=KEY, e.g. channels=model.width")
        out[src.strip()] = dst.strip()
    return out


def _write(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise RunnerError(f"{path} exists: choose another -o, or --force to replace it")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunnerError(f"cannot write {path}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    output: Path | None = args.output
    result = import_sweep(
        args.source,
        args.recipe,
        fmt=args.format,
        base=args.base,
        maps=_maps(args.map),
        metric=args.metric,
        trials=args.trials,
        name=args.name,
        output_name=str(output) if output else None,
    )
    if args.strict and result.unmapped:
        raise RunnerError(
            "--strict: keys not mapped (nothing written):\n  " + "\n  ".join(result.unmapped)
        )
    if output is not None:
        _write(output, result.text, args.force)
    else:
        out.write(result.text)
    for w in result.warnings:
        print(f"warning: {w}", file=err)
    where = str(output) if output else "the matrix"
    if result.problems:
        print(
            f"error: {where} does not plan as written (edit it, or import again with "
            "--base/--map):",
            file=err,
        )
        for line in result.problems:
            print(f"  {line}", file=err)
        return 1
    d = result.draft
    parts = [f"{len(d.axes)} axes"] if d.axes else []
    live = [e for e in d.space if not e.commented]
    if live:
        method = next(e.value for e in d.search if e.key == "method")
        parts.append(f"search over {len(live)} keys ({method})")
    if d.pruner:
        parts.append("ASHA pruner")
    summary = ", ".join(parts) or "one cell"
    if output:
        print(f"wrote {output}: {summary}; next: runner plan {output}", file=err)
    return 0
