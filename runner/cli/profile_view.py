"""``runner profile MATRIX [--steps N] [--cells ...] [--executor K] [--json]``: the command
and its table (one row per shape profiled, then each cell's predicted run)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.report.gpu_hours import fmt_hours


def add_parser(sub: Any, handler: Any) -> None:
    text = (
        "train each distinct cell shape for a few steps where the cells would run: step "
        "time, voxels/s, data wait, peak memory, loader workers' memory, predicted epoch "
        "and run time, GPU-hours"
    )
    p = sub.add_parser("profile", help=text, description=text)
    p.add_argument("matrix", help="the matrix YAML file")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per shape (100)")
    p.add_argument("--cells", help="only the shapes of these cells: ids, id prefixes, run names")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    from runner.executors.options import OPTIONS

    p.add_argument("--executor", choices=sorted(OPTIONS), help="profile on this executor instead")
    p.set_defaults(fn=handler, command="profile", slots=None)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _gb(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _memory(r: dict[str, Any]) -> str:
    if "gpu_peak_mem_gb" in r:
        return f"GPU {_gb(r['gpu_peak_mem_gb'])} GB"
    return f"RSS {_gb(r.get('peak_rss_gb'))} GB" if "peak_rss_gb" in r else "-"


def _status(r: dict[str, Any]) -> str:
    return {"ok": "ok", "oom": "OOM"}.get(str(r.get("status")), str(r.get("status", "?")))


def note(sid: str, r: dict[str, Any]) -> str | None:
    """A line under the table for a shape that did not run its steps: how far it got."""
    status = r.get("status")
    if status == "ok":
        return None
    reached = r.get("reached") or r
    steps = reached.get("steps", 0)
    if status == "oom":
        where = f"in the {r['phase']} phase" if "phase" in r else "(the process was killed)"
        tried = r.get("tried_to_allocate_gb")
        more = f"; it asked for {tried:.1f} GB more" if isinstance(tried, (int, float)) else ""
        return (
            f"{sid}: out of memory {where} after {steps} step(s), peak {_memory(reached)}"
            f"{more}: {r.get('message', '')}"
        )
    return f"{sid}: {status} after {steps} step(s): {r.get('message', '')}"


def table(profiles: dict[str, Any], chosen: list[str]) -> Table:
    t = Table(title=f"profile of {profiles['matrix']}", title_justify="left")
    for col in ("shape", "cell", "model", "patch", "batch", "workers", "amp", "ckpt", "status"):
        t.add_column(col, no_wrap=col in ("shape", "cell"))
    for col in ("step", "voxels/s", "data wait", "peak memory", "worker RSS GB", "epoch"):
        t.add_column(col, justify="right")
    for sid in chosen:
        r = profiles["shapes"][sid]
        shape = r.get("shape") or {}
        cells = r.get("cells") or {}
        first = cells.get(r.get("cell"), {}).get("run_name", r.get("cell", ""))
        workers = r.get("loader_worker_rss_gb") or []
        t.add_row(
            sid,
            first + (f" +{len(cells) - 1}" if len(cells) > 1 else ""),
            str(shape.get("model", "-")),
            "x".join(str(p) for p in shape.get("patch", [])) or "-",
            str(shape.get("batch", "-")),
            str(shape.get("workers", "-")),
            str(shape.get("amp", "-")),
            "on" if shape.get("grad_checkpointing") else "off",
            _status(r),
            _duration(r.get("step_s")),
            f"{r['voxels_per_s']:.3g}" if "voxels_per_s" in r else "-",
            f"{r['data_wait_fraction']:.0%}" if "data_wait_fraction" in r else "-",
            _memory(r),
            " ".join(_gb(w) for w in workers) or "-",
            _duration(r.get("epoch_s")),
        )
    return t


def runs(profiles: dict[str, Any], chosen: list[str]) -> Table:
    t = Table(title="predicted runs (training steps only)", title_justify="left")
    for col in ("cell", "shape", "steps", "epochs", "run time", "GPU-h"):
        t.add_column(col, justify="left" if col in ("cell", "shape") else "right")
    for sid in chosen:
        for cell in (profiles["shapes"][sid].get("cells") or {}).values():
            t.add_row(
                cell.get("run_name", "?"),
                sid,
                str(cell.get("total_steps", "-")),
                str(cell.get("epochs", "-")),
                _duration(cell.get("run_s")),
                fmt_hours(cell["gpu_hours"]) if "gpu_hours" in cell else "-",
            )
    return t


def run(plan: Any, args: argparse.Namespace, console: Console, warn: Any) -> int:
    from runner.sweep import profile
    from runner.sweep.selection import by_ids, parse_list

    ids = parse_list(args.cells)
    cells = by_ids(plan.cells, ids) if ids else plan.cells
    chosen = profile.shapes(plan, cells)
    say = console.print if not args.json else (lambda text: None)
    say(
        f"matrix {plan.matrix.spec.name}: {len(cells)} cells, {len(chosen)} distinct shapes, "
        f"{args.steps} steps each on executor {plan.matrix.spec.executor.kind}"
    )
    out = profile.run(plan, chosen, args.steps, say)
    ids_done = [s.id for s in chosen]
    for sid in ids_done:
        for warning in out["shapes"][sid].get("warnings") or []:
            warn(warning)
    if args.json:
        print(json.dumps({**out, "shapes": {s: out["shapes"][s] for s in ids_done}}, indent=1))
    else:
        console.print(table(out, ids_done))
        for sid in ids_done:
            if line := note(sid, out["shapes"][sid]):
                console.print(line, markup=False, soft_wrap=True)
        console.print(runs(out, ids_done))
        console.print(
            f"figures in {plan.ledger.root / 'profile' / 'profiles.json'}; `runner plan` "
            "estimates cells without a done run from them (profiled)",
            markup=False,
        )
    bad = [s for s in ids_done if out["shapes"][s].get("status") not in ("ok", "oom")]
    return 1 if bad else 0
