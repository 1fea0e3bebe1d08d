"""What an out-of-memory remedy costs (``on_oom`` in a matrix; runner.matrix.on_oom), measured
as the remedy runs: the segmentation recipe's own model build, data loaders and epoch function
(``train_one_epoch``: accumulation included) with the Hydra overrides the remedy makes.

GPU remedies, each configuration in a fresh process so that its peak memory is its own
(``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the peak RSS the epochs added, with
the same fixed ``MALLOC_MMAP_THRESHOLD_`` as bench/checkpointing.py so that RSS follows the
tensors): the original (``training.batch_size`` B, no accumulation) against
``grad_checkpointing``, ``halve_batch`` (B/2 volumes per micro-batch, ``accumulate_steps`` 2:
the same optimizer steps) and both. The figure is the time per optimizer step: what an epoch
and the LR schedule are counted in, so it is the cost a remedied cell pays per epoch.

Host remedies: peak memory of each DataLoader worker (peak RSS, ``VmHWM``, and the peak
proportional set size, PSS, sampled every 20 ms: RSS counts the pages a forked worker shares
with its parent, PSS splits them) and of all of them together, for the loader settings a host
OOM walks through: the original (2 workers, persistent, prefetch 2), ``fewer_workers`` (1),
``no_persistent_workers`` and ``smaller_prefetch`` (1), with the step time beside each.
Volumes are read from disk per patch (``data.cache_rate=0``) into 2-channel patches.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.checkpointing import MEASURE_ENV
from bench.common import RESULTS, Options, Outcome, Row, run_children, times

#: The GPU remedies as the matrix names them, and the overrides each makes over the original.
GPU_REMEDIES: dict[str, list[str]] = {
    "original": [],
    "grad_checkpointing": ["training.grad_checkpointing=true"],
    "halve_batch": ["training.batch_size={half}", "training.accumulate_steps=2"],
    "grad_checkpointing+halve_batch": [
        "training.grad_checkpointing=true",
        "training.batch_size={half}",
        "training.accumulate_steps=2",
    ],
}

CHILD = r"""
import json, resource, sys, time
import torch
from bench.loader import build_trainee
from runner.recipe import Recipe
from recipes.components.training.checkpoint import Progress
from recipes.segmentation.train import train_one_epoch

overrides, epochs = json.loads(sys.argv[1]), int(sys.argv[2])
cfg = Recipe.load("segmentation").compose(overrides)
data, trainee, batches = build_trainee(cfg)
device = trainee.device
steps = -(-batches // int(cfg.training.accumulate_steps))  # optimizer steps per epoch
progress = Progress()
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seconds = []
for epoch in range(1, epochs + 2):  # epoch 1 warms caches and allocators
    data.set_epoch(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss, _, _ = train_one_epoch(trainee, data.train_loader, epoch, progress)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if epoch > 1:
        seconds.append(time.perf_counter() - start)
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
print(json.dumps({"step_s": sorted(seconds)[len(seconds) // 2] / steps, "peak_mib": peak,
                  "optimizer_steps": steps, "micro_batches": batches,
                  "loss": loss}))
"""


def _gpu_overrides(root: str, cuda: bool, smoke: bool, batch: int) -> list[str]:
    size = 16 if smoke else 64 if cuda else 32
    common = [
        "data=demo",
        f"data.root={root}",
        "data.val_fraction=0.2",
        f"training.patch_size=[{size},{size},{size}]",
        f"training.batch_size={batch}",
        "training.samples_per_volume=2",
        "training.device=auto",
    ]
    # The published widths are GPU work; on a CPU the default model at its demo size.
    return common + ([] if cuda else ["model.size=tiny"])


def _proc_kib(pid: int) -> tuple[int, int]:
    """(peak RSS, current PSS) of ``pid`` in KiB; (0, 0) once it is gone."""
    try:
        hwm = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        pss = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            if line.startswith("Pss:")
        )
    except (OSError, StopIteration, ValueError):
        return 0, 0
    return hwm, pss


class WorkerWatch:
    """Samples this process's child processes (the loader's workers) every 20 ms: the peak
    RSS and the peak PSS each reached, by pid."""

    def __init__(self) -> None:
        self.peaks: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        me = os.getpid()
        try:
            text = Path(f"/proc/{me}/task/{me}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self._children():
                hwm, pss = _proc_kib(pid)
                if hwm:
                    top = self.peaks.setdefault(pid, [0, 0])
                    top[0], top[1] = max(top[0], hwm), max(top[1], pss)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


#: The host remedies in the order a host OOM walks them, as (workers, persistent, prefetch).
HOST_SETTINGS: dict[str, tuple[int, bool, int]] = {
    "original": (2, True, 2),
    "fewer_workers": (1, True, 2),
    "no_persistent_workers": (2, False, 2),
    "smaller_prefetch": (2, True, 1),
}


def measure_host(name: str, root: str, smoke: bool, epochs: int) -> dict[str, Any]:
    """Train ``epochs`` epochs after a warm-up one with the loader setting ``name``; the peak
    memory of its workers and the step time."""
    from bench.loader import Setting, _overrides, build_trainee
    from recipes.components.training.checkpoint import Progress
    from recipes.segmentation.train import train_one_epoch
    from runner.recipe import Recipe

    workers, persistent, prefetch = HOST_SETTINGS[name]
    setting = Setting(batch=2, workers=workers, prefetch=prefetch, persistent=persistent)
    patch = (16, 16, 8) if smoke else (64, 64, 32)
    cfg = Recipe.load("segmentation").compose(_overrides(setting, False, root, patch))
    data, trainee, steps = build_trainee(cfg)
    progress, seconds = Progress(), []
    with WorkerWatch() as watch:
        for epoch in range(1, epochs + 2):
            data.set_epoch(epoch)
            start = time.perf_counter()
            train_one_epoch(trainee, data.train_loader, epoch, progress)
            if epoch > 1:
                seconds.append(time.perf_counter() - start)
        del data  # ends persistent workers inside the watch
    peaks = list(watch.peaks.values())
    return {
        "step_s": sorted(seconds)[len(seconds) // 2] / steps,
        "workers_seen": len(peaks),
        "worker_peak_rss_mib": max((p[0] for p in peaks), default=0) / 1024,
        "worker_peak_pss_mib": max((p[1] for p in peaks), default=0) / 1024,
        "workers_peak_pss_sum_mib": _concurrent_pss(peaks, workers) / 1024,
    }


def _concurrent_pss(peaks: list[list[int]], workers: int) -> float:
    """The workers' memory at once: the ``workers`` largest PSS peaks (non-persistent workers
    restart each epoch, so more pids are seen than run together)."""
    return float(sum(sorted((p[1] for p in peaks), reverse=True)[:workers]))


def run(opts: Options) -> Outcome:
    import torch

    from recipes.components.data.demo_data import ensure_demo_dataset

    cuda = torch.cuda.is_available()
    cases, side = (5, 24) if opts.smoke else (10, 64)
    root = str(ensure_demo_dataset(RESULTS / "cache" / f"remedies-{side}", cases, side, seed=0))
    batch = 2 if opts.smoke else 4
    epochs = 1 if opts.quick else 2
    gpu_args = {
        name: [json.dumps(_gpu_overrides(root, cuda, opts.smoke, batch) + extra), str(epochs)]
        for name, extra in (
            (n, [o.format(half=batch // 2) for o in overrides])
            for n, overrides in GPU_REMEDIES.items()
        )
    }
    env = {**MEASURE_ENV, "OMP_NUM_THREADS": "1" if not cuda else "4"}
    outs = run_children([(CHILD, args) for args in gpu_args.values()], env, opts.smoke)
    gpu = {name: json.loads(line) for name, line in zip(gpu_args, outs, strict=True)}
    unit = "CUDA max allocated" if cuda else "CPU peak RSS added by the epochs"
    base = gpu["original"]
    rows = []
    for name, got in gpu.items():
        if name == "original":
            continue
        rows.append(
            Row(
                f"OOM remedy {name}: step time, peak memory",
                f"{got['step_s']:.3f} s/step, {got['peak_mib']:.0f} MiB",
                f"{base['step_s']:.3f} s/step, {base['peak_mib']:.0f} MiB",
                f"{times(got['step_s'], base['step_s'])} time, "
                f"{times(got['peak_mib'], base['peak_mib'])} memory",
                "— (info)",
                None,
                f"per optimizer step (batch {batch} volumes x 2 patches; halved: 2 micro-batches "
                f"of {batch // 2}); {unit}",
                {"remedy": got, "original": base},
            )
        )
    host = {name: measure_host(name, root, opts.smoke, epochs) for name in HOST_SETTINGS}
    hbase = host["original"]
    for name, got in host.items():
        rows.append(
            Row(
                f"OOM remedy {name}: loader workers' memory"
                if name != "original"
                else "Loader workers' memory (2 workers, persistent, prefetch 2)",
                f"{got['worker_peak_pss_mib']:.0f} MiB PSS per worker "
                f"({got['worker_peak_rss_mib']:.0f} RSS), {got['workers_peak_pss_sum_mib']:.0f} "
                "MiB together",
                f"{hbase['workers_peak_pss_sum_mib']:.0f} MiB together",
                times(got["workers_peak_pss_sum_mib"], hbase["workers_peak_pss_sum_mib"]),
                "— (info)",
                None,
                f"step {got['step_s']:.3f} s vs {hbase['step_s']:.3f} s "
                f"({times(got['step_s'], hbase['step_s'])}); {got['workers_seen']} worker "
                "processes seen",
                got,
            )
        )
    markdown = (
        "OOM remedies: each GPU remedy's time per optimizer step and peak memory against the "
        f"original configuration, in one run ({unit}); the loader settings a host OOM walks "
        "through, with each worker's peak PSS (its own share of memory) and peak RSS (with the "
        "pages it shares with the trainer)."
    )
    return Outcome(rows, {"gpu": gpu, "host": host, "cuda": cuda}, markdown)
