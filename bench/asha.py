"""ASHA against the grid it searches: 27 MeshNet configurations (learning rate × width ×
background class weight) on small synthetic data, every one trained to ``max_epochs`` (the
grid: its best is known), then the same 27 as a search (``method: grid``, each seed a
different order) with the ASHA pruner, through the runner's own sweep. Measured: ASHA's best
val Dice (among the trials it ran to the end) against the grid's best, and the epochs it
spent against the grid's, over 3 seeds. Goal: within 1 % of the best at ≤ 40 % of the
epochs.

ASHA as its paper and Optuna's SuccessiveHalvingPruner set it: min_epochs 1 (the smallest
resource), reduction factor η = 3, one bracket (s = 0, the paper's ASHA), rungs at epochs 1
and 3 of 9; nothing here is tuned to the grid's result. The task is one where an epoch is a
unit of training a validation can rank: 8 patches per volume (48 steps an epoch) and
OneCycle's warm-up over 10 % of the run (the stroke group's middle value), not 2 patches at
a warm-up learning rate of peak/25 for all of the first epoch, where 21 of the 27 cells
scored the same val Dice at epoch 1 (every voxel foreground) and a rung had nothing to rank.

Cells run in the bench's process (the debug executor, one at a time), so process start-up
is not counted and arrivals at the rungs follow the search's order exactly. That order is
a function of the seed and of the config, which holds the data's temporary path: each run
of the bench sees 3 new orders (the spread between runs is ASHA's own). Training is
deterministic on the CPU: a configuration ASHA runs to the end scores what it scored in
the grid (``same_as_grid`` says whether it did).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Options, Outcome, Row

LRS = [3e-4, 3e-3, 3e-2]
WIDTHS = [3, 6, 10]
BG = [0.1, 0.5, 0.9]
MAX_EPOCHS = 9
ETAS = (3,)
PATCHES = 8  # per volume and epoch
WARMUP = 0.1  # OneCycle's pct_start


def _base(data: Path, max_epochs: int, patches: int = PATCHES) -> list[str]:
    return [
        "data=demo",
        f"data.root={data}",
        "model=meshnet",
        "model.dilations=[1,2,4,2,1]",
        "optimizer=adamw",
        "scheduler=onecycle",
        f"scheduler.pct_start={WARMUP}",
        "loss=ce_weighted",
        f"training.max_epochs={max_epochs}",
        "training.val_interval=1",
        "training.batch_size=1",
        f"training.samples_per_volume={patches}",
        "training.patch_size=[16,16,16]",
        "training.num_threads=1",
    ]


def _sweep(
    root: Path,
    name: str,
    body: str,
    data: Path,
    max_epochs: int,
    patches: int = PATCHES,
    fixed: dict[str, Any] | None = None,
) -> Any:
    from runner.plan import make_plan
    from runner.sweep.submit import submit

    path = root / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nrecipe: segmentation\n"
        f"base: {[*_base(data, max_epochs, patches), *held(fixed)]!r}\n{body}"
        f"executor: {{kind: debug}}\ntracking: {{uri: 'sqlite:///{root}/mlruns.db'}}\n"
        f"sweep_dir: {root}/sweeps\n"
    )
    submit(make_plan(path, workdir=root))
    return make_plan(path, workdir=root)


KEYS = ("optimizer.lr", "model.width", "loss.background_weight")


def held(fixed: dict[str, Any] | None) -> list[str]:
    return [f"{k}={v}" for k, v in (fixed or {}).items()]


def _summary(plan: Any, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Epochs spent, best val Dice per configuration (``fixed``: keys held in base), states."""
    states = plan.states()
    epochs, best = 0, {}
    for cell in plan.cells:
        status = plan.ledger.cell(cell.id).attempt(1).read("status") or {}
        epochs += int(status.get("epochs") or 0)
        if states[cell.id].state == "done" and states[cell.id].best_val_dice is not None:
            key = tuple({**(fixed or {}), **cell.values}[k] for k in KEYS)
            best[key] = states[cell.id].best_val_dice
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s.state] = counts.get(s.state, 0) + 1
    return {"epochs": epochs, "done": best, "states": counts}


def run(opts: Options) -> Outcome:
    from recipes.components.data.demo_data import ensure_demo_dataset

    seeds = [0] if opts.quick else [0, 1, 2]
    max_epochs = 3 if opts.smoke else 6 if opts.quick else MAX_EPOCHS
    # Smoke: 2 configurations (width and weight held in base: a choice needs two values) of
    # 2 patches a volume on 5 small cases, the same code paths.
    lrs, widths, bgs = (LRS[:2], WIDTHS[:1], BG[:1]) if opts.smoke else (LRS, WIDTHS, BG)
    values = dict(zip(KEYS, (lrs, widths, bgs), strict=True))
    fixed = {k: v[0] for k, v in values.items() if len(v) == 1}
    searched = {k: v for k, v in values.items() if len(v) > 1}
    patches = 2 if opts.smoke else PATCHES
    with tempfile.TemporaryDirectory(prefix="bench-asha-") as tmp:
        root = Path(tmp)
        cases, side = (5, 16) if opts.smoke else (8, 32)
        data = ensure_demo_dataset(root / "demo", cases=cases, size=side, seed=0)
        old = os.getcwd()
        os.chdir(root)
        try:
            t = time.perf_counter()
            axes = "axes:\n" + "".join(f"  {k}: {v}\n" for k, v in searched.items())
            grid_plan = _sweep(root, "grid", axes, data, max_epochs, patches, fixed)
            grid = _summary(grid_plan, fixed)
            grid_s = time.perf_counter() - t
            space = "".join(
                f"    {k}: choice({', '.join(map(str, v))})\n" for k, v in searched.items()
            )
            runs: dict[int, list[dict[str, Any]]] = {}
            for eta in ETAS:
                runs[eta] = []
                for seed in seeds:
                    t = time.perf_counter()
                    body = f"search:\n  method: grid\n  seed: {seed}\n  space:\n{space}"
                    body += f"pruner: {{kind: asha, min_epochs: 1, max_epochs: {max_epochs}, "
                    body += f"reduction_factor: {eta}}}\n"
                    name = f"asha-e{eta}-s{seed}"
                    plan = _sweep(root, name, body, data, max_epochs, patches, fixed)
                    out = _summary(plan, fixed)
                    out["seconds"] = time.perf_counter() - t
                    runs[eta].append(out)
        finally:
            os.chdir(old)
    grid_best = max(grid["done"].values())
    details: dict[str, Any] = {"grid": {**grid, "seconds": grid_s, "best": grid_best}}
    configs = len(lrs) * len(widths) * len(bgs)
    rows = [
        _row(eta, seeds, runs[eta], grid, grid_best, max_epochs, details, configs) for eta in ETAS
    ]
    return Outcome(rows, details={k: _plain(v) for k, v in details.items()})


def _row(
    eta: int,
    seeds: list[int],
    runs: list[dict[str, Any]],
    grid: dict[str, Any],
    grid_best: float,
    max_epochs: int,
    details: dict[str, Any],
    configs: int,
) -> Row:
    ratios, shares, out = [], [], []
    for seed, r in zip(seeds, runs, strict=True):
        best = max(r["done"].values())
        ratio, share = best / grid_best, r["epochs"] / grid["epochs"]
        ratios.append(ratio)
        shares.append(share)
        same = all(abs(v - grid["done"][k]) < 1e-6 for k, v in r["done"].items())
        out.append({**r, "seed": seed, "best": best, "ratio": ratio, "share": share})
        out[-1]["same_as_grid"] = same
    details[f"asha_eta{eta}"] = out
    met = all(x >= 0.99 for x in ratios) and all(s <= 0.40 for s in shares)
    notes = "; ".join(
        f"order {d['seed']}: {d['ratio']:.3f}× at {100 * d['share']:.0f} % "
        f"({d['states'].get('done', 0)} done, {d['states'].get('pruned', 0)} pruned)"
        for d in out
    )
    return Row(
        f"ASHA vs grid: {configs} MeshNet configs, {max_epochs} epochs, η={eta}, "
        f"{len(seeds)} orders",
        f"best val Dice {statistics.fmean(ratios):.3f}× the grid's (min {min(ratios):.3f}) "
        f"at {100 * statistics.fmean(shares):.0f} % of its epochs",
        f"grid best {grid_best:.4f}, {grid['epochs']} epochs",
        f"{statistics.fmean(ratios):.3f}× / {statistics.fmean(shares):.2f}×",
        "≥ 0.99× the best at ≤ 0.40× the epochs",
        met,
        notes
        + "; a trial run to the end scores what it scored in the grid: "
        + str(all(d["same_as_grid"] for d in out)),
        {"ratios": ratios, "epoch_shares": shares},
    )


def _plain(value: Any) -> Any:
    """JSON-friendly: tuple keys (configurations) as text."""
    if isinstance(value, dict):
        return {str(k) if isinstance(k, tuple) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
