"""Benchmark: does the GPU idle between batches? Step time and ``data_wait_fraction`` against
the DataLoader settings, for the 3D ink-detection group's case.

Their question: patch 72 x 136 x 136 (z, y, x; the recipe reads x, y, z: [136, 136, 72]),
batch 1 vs 4 patches per step, 1 vs 6 workers, prefetch, persistent workers. Each setting
trains real epochs with the recipe's own loader (``recipes.components.data.loaders``: cached
volumes, random foreground-aware crops, flips and intensity augmentation per patch) and its
own epoch function (volumes read from disk for every patch, no RAM cache), the batches timed
by the trainer's ``LoaderClock``; the figures are the
trainer's ``throughput`` metrics (``data_wait_fraction``, ``samples_per_s``) and the step
time. Ratios are against ``num_workers=0`` at the same batch size, measured in the same run.

Model: the recipe's default network at its published size with BF16 autocast on CUDA; on a
CPU a one-layer MeshNet (width 4) in FP32, so that the loader's share is still
visible on a CPU at all (a published network on a CPU is all compute). Data: synthetic
volumes of 144^3 (two channels, gzipped NIfTI; bench/results/cache), so that every crop is a
real crop. Each setting trains one warm-up epoch (workers start, kernels tune), then the
measured ones.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from bench.common import RESULTS, Options, Outcome, Row, median

INK_PATCH = (136, 136, 72)  # x, y, z of their 72 x 136 x 136
VOLUME_SIDE = 144
CASES = 10  # 8 train / 2 validation (val_fraction 0.2): batch 4 gives 2 steps an epoch
#: A smoke run's patch, volumes and cases (4 train, 1 validation).
SMOKE_PATCH, SMOKE_SIDE, SMOKE_CASES = (16, 16, 8), 24, 5


@dataclass(frozen=True)
class Setting:
    batch: int
    workers: int
    prefetch: int | None = None  # None: torch's default (2) when workers > 0
    persistent: bool = False

    @property
    def label(self) -> str:
        extra = ""
        if self.workers:
            extra = f", prefetch {self.prefetch or 2}" + (", persistent" if self.persistent else "")
        return f"batch {self.batch}, workers {self.workers}{extra}"


def settings(quick: bool, cpus: int, smoke: bool = False) -> list[Setting]:
    """The ink group's grid: batch 1 and 4; workers 0 (the baseline), 1, 2 (and 6 where the
    machine has the cores); the full run adds prefetch 4 and persistent workers. Smoke:
    batch 1 with 0 and 1 (persistent) worker."""
    if smoke:
        return [Setting(1, 0), Setting(1, 1, persistent=True)]
    workers = [0, 1, 2] + ([6] if cpus >= 8 else [])
    out = [Setting(b, w, persistent=w > 0) for b in (1, 4) for w in workers]
    if not quick:
        top = max(workers)
        out += [Setting(b, top) for b in (1, 4)]  # not persistent: workers restart each epoch
        out += [Setting(b, top, prefetch=4, persistent=True) for b in (1, 4)]
    return out


def _overrides(s: Setting, cuda: bool, root: str, patch: tuple[int, ...] = INK_PATCH) -> list[str]:
    common = [
        "data=demo",
        f"data.root={root}",
        "data.val_fraction=0.2",
        # Read from disk per patch, as their volumes are (zarr chunks, not a RAM cache): the
        # loader's work is decompressing, cropping and augmenting.
        "data.cache_rate=0",
        f"training.patch_size=[{','.join(map(str, patch))}]",
        f"training.batch_size={s.batch}",
        "training.samples_per_volume=1",  # batch = patches per step, as theirs
        f"training.num_workers={s.workers}",
        f"training.persistent_workers={str(s.persistent).lower()}",
        f"training.pin_memory={str(cuda).lower()}",
        "training.device=auto",
    ]
    if s.prefetch is not None:
        common.append(f"training.prefetch_factor={s.prefetch}")
    if cuda and patch == INK_PATCH:
        return [*common, "training.amp=bf16"]  # the published default model
    return [*common, "model=meshnet", "model.width=4", "model.dilations=[1]"]


def build_trainee(cfg: Any) -> tuple[Any, Any, int]:
    """What the recipe trains ``cfg`` with, built as its trainer builds it: the data bundle, a
    ``Trainee`` (model, with gradient checkpointing where the config asks, loss, optimizer, an
    LR schedule over the epoch's batches, no scaler) and the batches of an epoch."""
    import torch

    from recipes.components.data.loaders import build_data
    from recipes.components.models.build import apply_grad_checkpointing, build_model
    from recipes.components.training.losses import build_loss
    from recipes.components.training.optim import build_optimizer, build_scheduler
    from recipes.components.training.setup import resolve_device, seed_everything
    from recipes.segmentation.train import Trainee

    seed_everything(cfg.seed, deterministic=False)
    device = resolve_device(cfg.training.device)
    data = build_data(cfg.data, cfg.training, cfg.seed)
    model = build_model(cfg.model).to(device)
    if cfg.training.get("grad_checkpointing"):
        apply_grad_checkpointing(model)
    loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.model.name)
    steps = len(data.train_loader)
    schedule = build_scheduler(cfg.scheduler, optimizer, steps, 100_000)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    return data, Trainee(model, loss_fn, optimizer, schedule, scaler, device, cfg.training), steps


def measure(
    s: Setting, cuda: bool, root: str, epochs: int, patch: tuple[int, ...] = INK_PATCH
) -> dict[str, Any]:
    """Train ``epochs`` epochs after one warm-up epoch; the trainer's throughput figures."""
    import torch

    from recipes.components.training.checkpoint import Progress
    from recipes.components.training.step import LoaderClock, throughput
    from recipes.segmentation.train import train_one_epoch
    from runner.recipe import Recipe

    cfg = Recipe.load("segmentation").compose(_overrides(s, cuda, root, patch))
    data, trainee, steps = build_trainee(cfg)
    device = trainee.device
    progress = Progress()
    rows = []
    for epoch in range(1, epochs + 2):  # epoch 1 warms up (workers, caches, kernels)
        data.set_epoch(epoch)
        clock = LoaderClock(data.train_loader)
        start = time.perf_counter()
        _, patches, _ = train_one_epoch(trainee, clock, epoch, progress)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if epoch > 1:
            rows.append({**throughput(clock, seconds, patches, patch, device), "s": seconds})
    del data  # ends persistent workers before the next setting starts its own
    return {
        "step_s": median([r["s"] for r in rows]) / steps,
        "data_wait_fraction": median([r["data_wait_fraction"] for r in rows]),
        "samples_per_s": median([r["samples_per_s"] for r in rows]),
        "steps_per_epoch": steps,
        "epochs": rows,
    }


def run(o: Options) -> Outcome:
    import torch

    from recipes.components.data.demo_data import ensure_demo_dataset

    cuda = torch.cuda.is_available()
    cpus = os.cpu_count() or 1
    if o.smoke:
        patch, where = (
            SMOKE_PATCH,
            ensure_demo_dataset(RESULTS / "cache" / "ink-smoke", SMOKE_CASES, SMOKE_SIDE, seed=0),
        )
    else:
        patch, where = (
            INK_PATCH,
            ensure_demo_dataset(RESULTS / "cache" / "ink", CASES, VOLUME_SIDE, seed=0),
        )
    root = str(where)
    epochs = 1 if o.quick else 3
    results = {s: measure(s, cuda, root, epochs, patch) for s in settings(o.quick, cpus, o.smoke)}
    rows = []
    for s, r in results.items():
        base = results[Setting(s.batch, 0)]
        speedup = base["step_s"] / r["step_s"]
        rows.append(
            Row(
                f"Loader: {s.label}",
                f"{r['step_s']:.3f} s/step, waits {r['data_wait_fraction']:.0%}",
                f"{base['step_s']:.3f} s/step, waits {base['data_wait_fraction']:.0%}",
                f"{speedup:.2f}×",
                "— (info)",
                None,
                f"{r['samples_per_s']:.2f} patches/s of {list(patch)} (x, y, z); "
                f"baseline: workers 0, batch {s.batch}",
                {"setting": s.__dict__, **{k: v for k, v in r.items() if k != "epochs"}},
            )
        )
    model = (
        "the default model, published size, BF16"
        if cuda and patch == INK_PATCH
        else "MeshNet width 4"
    )
    markdown = (
        f"Loader settings for a {patch[2]}x{patch[1]}x{patch[0]} patch (z, y, x), "
        f"{model}, {cpus} CPUs. `waits`: the trainer's data_wait_fraction (the share of the "
        "epoch the step waited for a batch; near 1 the accelerator idles). Ratio: step-time "
        "speed-up over num_workers=0 at the same batch size."
    )
    details = {"cuda": cuda, "cpus": cpus, "patch_xyz": patch, "model": model}
    details["settings"] = {s.label: r for s, r in results.items()}
    return Outcome(rows, details, markdown)
