"""Parts 3 and 5: the diffusion recipe's sampling and the segmentation recipe's loader.

3. DDIM-50 sampling of ``medsegdiff_16c`` on 64 windows of 256², BF16 against FP32: peak
   memory and time, through the recipe's sampler (``components/diffusion/sampling.py``).
5. ``data_wait_fraction`` (the share of an epoch the step waited for its batch, the
   trainer's own ``LoaderClock``/``throughput``) for the ink group's 72×136×136 patches,
   4 a step, with 0, 2 and 6 DataLoader workers: the recipe's loader over a synthetic
   dataset written to a scratch directory (volumes read from disk for every patch, as
   their zarr chunks are), the recipe's epoch function, its default network in BF16.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import Row
from bench.gpu.harness import Ctx, Deadline, PartRecord, free_memory, item
from bench.gpu.recipe import GIB, compose, recipe_kernels, sync


@dataclass(frozen=True)
class Sampling:
    model: str
    side: int
    batch: int
    steps: int
    repeats: int


def _sample_once(net: Any, mode: str, sampler: Any, image: torch.Tensor, amp: str) -> float:
    from recipes.components.diffusion.sampling import sample

    sync()
    start = time.perf_counter()
    generator = torch.Generator(device=image.device).manual_seed(0)
    sample(net, mode, sampler, image, amp, generator)
    sync()
    return time.perf_counter() - start


def diffusion_sampling(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    from recipes.components.diffusion.models import build_denoiser
    from recipes.components.diffusion.noise import build_schedulers

    s = (
        Sampling("medsegdiff_tiny", 32, 2, 3, ctx.timed(1))
        if ctx.tiny
        else Sampling("medsegdiff_16c", 256, 64, 50, ctx.timed(2))
    )
    cfg = compose(
        "diffusion",
        [
            f"model={s.model}",
            f"training.patch_size=[{s.side},{s.side}]",
            f"diffusion.sampling_steps={s.steps}",
        ],
    )
    torch.manual_seed(0)
    net, mode = build_denoiser(cfg.model)
    net = net.to(ctx.device).eval()
    _, sampler = build_schedulers(cfg.diffusion)
    image = torch.randn(s.batch, int(cfg.data.in_channels), s.side, s.side, device=ctx.device)
    got: dict[str, dict[str, Any]] = {}
    for amp in ("fp32", "bf16"):
        with item(rec, amp), recipe_kernels(ctx.device, amp):
            dl.require(f"sampling {amp}")
            if ctx.cuda:
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if ctx.cuda else 0
            warm = _sample_once(net, mode, sampler, image, amp)  # allocator, kernels
            dl.check(warm * s.repeats, f"sampling {amp}: {s.repeats} timed runs")
            times = [_sample_once(net, mode, sampler, image, amp) for _ in range(s.repeats)]
            peak = (torch.cuda.max_memory_allocated() - base) / GIB if ctx.cuda else None
            got[amp] = {"sample_s": statistics.median(times), "peak_gib": peak, "times_s": times}
    shape = f"{s.model}, {s.batch} windows of {s.side}², DDIM {s.steps} steps"
    rec.details["setup"] = s.__dict__
    if not ctx.cuda:
        rec.skip("peak memory", "no CUDA device")
    if len(got) < 2:
        return
    b, f = got["bf16"], got["fp32"]
    ratio = b["sample_s"] / f["sample_s"]
    rec.rows.append(
        Row(
            "Diffusion sampling BF16 vs FP32: time",
            f"{b['sample_s']:.2f} s",
            f"{f['sample_s']:.2f} s",
            f"{ratio:.2f}×",
            "—",
            None,
            f"{shape}; the recipe's sampler, network under autocast, scheduler in FP32",
            got,
        )
    )
    if b["peak_gib"] is not None:
        m = b["peak_gib"] / f["peak_gib"]
        rec.rows.append(
            Row(
                "Diffusion sampling BF16 vs FP32: peak memory",
                f"{b['peak_gib']:.2f} GiB",
                f"{f['peak_gib']:.2f} GiB",
                f"{m:.2f}×",
                "< 1×",
                m < 1,
                f"{shape}; torch.cuda.max_memory_allocated beyond the weights and images",
                got,
            )
        )


@dataclass(frozen=True)
class LoaderSetup:
    patch: tuple[int, int, int]  # x, y, z as the recipe reads training.patch_size
    batch: int
    workers: tuple[int, ...]
    side: int  # the synthetic volumes are side³
    unique: int  # distinct volumes generated; the rest are links to them
    cases: int
    epochs: int  # measured, after one warm-up epoch


def loader_setup(ctx: Ctx) -> LoaderSetup:
    if ctx.tiny:
        return LoaderSetup((16, 16, 8), 2, (0, 2, 6), 20, 2, 6, ctx.timed(1))
    # 72 x 136 x 136 (z, y, x); 12 cases: 9 train (val 0.25) -> 3 steps of 4 an epoch.
    return LoaderSetup((136, 136, 72), 4, (0, 2, 6), 144, 4, 12, ctx.timed(2))


def write_dataset(root: Path, setup: LoaderSetup) -> Path:
    """The demo dataset (``demo_data.py``) with ``setup.unique`` generated volumes, linked
    under more case names: every case is still a real file read and decompressed per
    patch, without paying ~2 s of generation for each."""
    from recipes.components.data.demo_data import write_dataset as write_demo

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    write_demo(root, cases=setup.unique, size=setup.side, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    ending = meta["file_ending"]
    for case in range(setup.unique, setup.cases):
        source = f"demo_{case % setup.unique:03d}"
        target = f"demo_{case:03d}"
        pairs = [(root / "labelsTr" / f"{source}{ending}", root / "labelsTr" / f"{target}{ending}")]
        for channel in meta["channel_names"]:
            name = f"_{int(channel):04d}{ending}"
            pairs.append(
                (root / "imagesTr" / f"{source}{name}", root / "imagesTr" / f"{target}{name}")
            )
        for src, dst in pairs:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    meta["numTraining"] = setup.cases
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def _loader_epochs(ctx: Ctx, root: Path, setup: LoaderSetup, workers: int, dl: Deadline) -> dict:
    """Train one warm-up epoch and ``setup.epochs`` measured ones; the trainer's figures."""
    from bench.gpu.recipe import build_trainee
    from recipes.components.data.loaders import build_data
    from recipes.components.training.checkpoint import Progress
    from recipes.components.training.loop import train_one_epoch
    from recipes.components.training.step import LoaderClock, throughput

    overrides = [
        f"data.root={root}",
        "data.cache_rate=0",  # read from disk per patch
        "data.val_fraction=0.25",
        f"training.patch_size=[{','.join(map(str, setup.patch))}]",
        f"training.batch_size={setup.batch}",
        "training.samples_per_volume=1",  # batch = patches a step, as theirs
        f"training.num_workers={workers}",
        f"training.persistent_workers={str(workers > 0).lower()}",
        f"training.pin_memory={str(ctx.cuda).lower()}",
        "training.device=auto",
    ]
    if ctx.cuda:
        overrides.append("training.amp=bf16")  # the default network at its published size
    else:  # a CPU trains a one-layer MeshNet, so that the loader's share still shows
        overrides += ["model=meshnet", "model.width=4", "model.dilations=[1]"]
    cfg = compose("segmentation", overrides)
    data = build_data(cfg.data, cfg.training, cfg.seed, cfg.get("augmentation"))
    trainee = build_trainee(cfg, ctx.device)
    progress, rows = Progress(), []
    try:
        with recipe_kernels(ctx.device, cfg.training.amp):
            for epoch in range(1, setup.epochs + 2):  # epoch 1: workers start, kernels tune
                data.set_epoch(epoch)
                clock = LoaderClock(data.train_loader)
                start = time.perf_counter()
                _, patches, _ = train_one_epoch(trainee, clock, epoch, progress)
                sync()
                seconds = time.perf_counter() - start
                if epoch == 1:
                    dl.check(seconds * setup.epochs, f"workers {workers}: {setup.epochs} epochs")
                else:
                    rows.append(
                        {
                            **throughput(clock, seconds, patches, setup.patch, ctx.device),
                            "s": seconds,
                        }
                    )
    finally:
        del data  # ends persistent workers before the next setting starts its own
    return {
        "data_wait_fraction": statistics.median(r["data_wait_fraction"] for r in rows),
        "samples_per_s": statistics.median(r["samples_per_s"] for r in rows),
        "epoch_s": statistics.median(r["s"] for r in rows),
        "model": cfg.model.name,
        "epochs": rows,
    }


def loader_wait(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    setup = loader_setup(ctx)
    dl.require("dataset")
    start = time.perf_counter()
    root = write_dataset(ctx.tmp / "ink", setup)
    rec.details |= {
        "setup": setup.__dict__,
        "dataset_s": time.perf_counter() - start,
        "cpus": os.cpu_count(),
    }
    results: dict[int, dict] = {}
    for workers in setup.workers:
        with item(rec, f"workers {workers}"):
            dl.require(f"workers {workers}")
            results[workers] = _loader_epochs(ctx, root, setup, workers, dl)
        free_memory()
    rec.details["settings"] = results
    base = results.get(0)
    z, y, x = setup.patch[2], setup.patch[1], setup.patch[0]
    for workers, r in results.items():
        speed = base["epoch_s"] / r["epoch_s"] if base else None
        rec.rows.append(
            Row(
                f"Loader wait, {z}×{y}×{x} batch {setup.batch}, {workers} workers",
                f"waits {r['data_wait_fraction']:.0%}, {r['samples_per_s']:.1f} patches/s",
                f"waits {base['data_wait_fraction']:.0%} (0 workers)" if base else "—",
                f"{speed:.2f}×" if speed else "—",
                "—",
                None,
                f"data_wait_fraction of the recipe's epochs ({r['model']}"
                f"{', BF16' if ctx.cuda else ', CPU'}); volumes of {setup.side}³ read from "
                "disk per patch (cache_rate 0); persistent workers; ratio: the epoch's speed "
                "against 0 workers",
                r,
            )
        )
