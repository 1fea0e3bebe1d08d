"""``python -m bench.gpu [--tiny] [--budget-s S] [--out DIR] [--only PART] [--render JSON]``.

The eight parts run in order, each within its share of the budget (what earlier parts left
unused is shared among the later ones); the JSON and the Markdown are rewritten after each
part, so a run that is killed still leaves what it measured. Exit status 0 when every part
ran to a result (figures, a skip with its reason, or a check not met), 1 when one raised;
2 without a CUDA device and without ``--tiny`` or ``--out`` (nothing to measure, and the
figures at the repository root stay as they are).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS

# key, title, share of the budget (weights; startup and the report take the rest).
PARTS: tuple[tuple[str, str, float], ...] = (
    ("bf16_step", "BF16 autocast vs FP32: step time and peak memory", 95),
    ("grad_checkpointing", "Gradient checkpointing on vs off: peak memory and step time", 70),
    ("diffusion_sampling", "DDIM-50 sampling of medsegdiff_16c: BF16 vs FP32", 45),
    ("dynunet_throughput", "DynUNet voxels/s against NVIDIA's A100 figure", 30),
    ("loader_wait", "data_wait_fraction at 72×136×136 with 0, 2, 6 workers", 110),
    ("nccl_ddp", "NCCL process group of one through the DDP path", 25),
    ("system_metrics", "MLflow system metrics: system/gpu_* series", 20),
    ("bf16_numerics", "BF16 numerics guard: the recipe's step and pytorch#163539's conv3d", 45),
)
NAMES = tuple(key for key, _, _ in PARTS)
RESERVE_S = 10.0  # kept back from the parts' shares for start-up and the last write


def _bodies() -> dict[str, Callable[..., None]]:
    from bench.gpu import parts_data, parts_numerics, parts_system, parts_train

    return {
        "bf16_step": parts_train.bf16_step,
        "grad_checkpointing": parts_train.grad_checkpointing,
        "diffusion_sampling": parts_data.diffusion_sampling,
        "dynunet_throughput": parts_train.dynunet_throughput,
        "loader_wait": parts_data.loader_wait,
        "nccl_ddp": parts_system.nccl_ddp,
        "system_metrics": parts_system.system_metrics,
        "bf16_numerics": parts_numerics.bf16_numerics,
    }


def _part_budgets(values: list[str]) -> dict[str, float]:
    out = {}
    for value in values:
        name, _, seconds = value.partition("=")
        if name not in NAMES or not seconds:
            raise SystemExit(
                f"--part-budget takes NAME=SECONDS with NAME one of {', '.join(NAMES)}"
            )
        out[name] = float(seconds)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="every part at tiny sizes (CPU ok)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="total wall-clock budget")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where gpu-check.{json,md} go (default: the repository root; --tiny: bench/results)",
    )
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this part")
    parser.add_argument(
        "--part-budget",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="a part's budget instead of its share",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per configuration (sampling runs, loader epochs) instead of each "
        "part's default",
    )
    parser.add_argument("--render", type=Path, help="print the Markdown of a gpu-check.json")
    return parser.parse_args(argv)


def _share(name: str, left_s: float, pending: list[str]) -> float:
    weights = {key: w for key, _, w in PARTS}
    return max(0.0, left_s) * weights[name] / sum(weights[p] for p in pending)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render:
        from bench.gpu.report import render_markdown

        print(render_markdown(json.loads(args.render.read_text())), end="")
        return 0
    t0, started = time.perf_counter(), datetime.now(UTC)
    explicit = _part_budgets(args.part_budget)
    import torch

    if args.out is None:
        if not args.tiny and not torch.cuda.is_available():
            # Nothing to measure; and the figures at the root are the committed ones.
            print(
                "no CUDA device: nothing measured, nothing written (`python -m bench.gpu "
                "--tiny` runs every part's code on the CPU)",
                file=sys.stderr,
            )
            return 2
        args.out = RESULTS if args.tiny else REPO

    from bench.gpu.environment import describe, environment
    from bench.gpu.harness import Ctx, PartRecord, run_part, write_results
    from bench.gpu.recipe import device

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    env = environment()
    print(f"[gpu-check] {describe(env)}", file=sys.stderr, flush=True)
    records = {key: PartRecord(key, i, title) for i, (key, title, _) in enumerate(PARTS, 1)}
    doc: dict[str, Any] = {
        "schema": "gpu-check/1",
        "mode": "tiny" if args.tiny else "full",
        "command": shlex.join(
            ["python", "-m", "bench.gpu", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started": started.isoformat(timespec="seconds"),
        "budget_s": args.budget_s,
        "complete": False,
        "environment": env,
        "parts": {key: r.as_dict() for key, r in records.items()},
    }
    selected = [n for n in NAMES if not args.only or n in args.only]
    for key in NAMES:
        if key not in selected:
            records[key].reason = "not selected (--only)"
    if not args.tiny and not torch.cuda.is_available():
        for key in selected:
            records[key].reason = "no CUDA device (--tiny runs every part's code on the CPU)"
        selected = []
    for key in selected:  # what a run killed before the part got to reads
        records[key].reason = "not run: the check was stopped before this part"
    doc["parts"] = {key: r.as_dict() for key, r in records.items()}
    write_results(args.out, doc)
    bodies = _bodies()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Ctx(tiny=args.tiny, device=device(), tmp=Path(tmp), steps=args.steps)
        for i, key in enumerate(selected):
            rec = records[key]
            rec.reason = None
            left = args.budget_s - (time.perf_counter() - t0) - RESERVE_S
            rec.budget_s = explicit.get(key, _share(key, left, selected[i:]))
            print(
                f"[gpu-check] {rec.number}. {key} (budget {rec.budget_s:.0f} s) ...",
                file=sys.stderr,
                flush=True,
            )
            body = bodies[key]
            run_part(
                rec, lambda r, dl, b=body: b(ctx, r, dl), grace_s=max(5.0, 0.15 * rec.budget_s)
            )
            print(
                f"[gpu-check] {rec.number}. {key}: {rec.status} in {rec.elapsed_s:.1f} s"
                + (f" ({rec.reason[:300]})" if rec.reason else ""),
                file=sys.stderr,
                flush=True,
            )
            doc["parts"][key] = rec.as_dict()
            doc["duration_s"] = time.perf_counter() - t0
            write_results(args.out, doc)
    doc |= {
        "parts": {key: r.as_dict() for key, r in records.items()},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "complete": True,
    }
    write_results(args.out, doc)
    print((args.out / "gpu-check.md").read_text())
    print(f"[gpu-check] wrote {args.out / 'gpu-check.json'} and gpu-check.md", file=sys.stderr)
    return 1 if any(r.status == "error" for r in records.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
