"""Benchmark: what `no_sync` saves in a DDP cell that accumulates gradients.

Two ranks (gloo on the CPU, NCCL when two GPUs are visible) train the segmentation recipe's
epoch function (``recipes.components.training.loop.train_one_epoch``) with
``training.accumulate_steps=4`` on SegResNet at its published width (32 filters): the
recipe all-reduces the gradients on the micro-batch that steps the optimizer only (DDP's
``no_sync`` on the others). The baseline, measured in the same group and interleaved with
it, all-reduces on every micro-batch (``no_sync`` switched off), which is what a DDP loop
without it does. Figures: the time per optimizer step and the all-reduce calls DDP made
(counted by a communication hook), medians over the repeats.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Options, Outcome, Row, median

ACCUMULATE = 4
MICRO_BATCHES = 8  # per rank and repeat: 2 optimizer steps
PATCH = 32
FILTERS = 32  # SegResNet's published width


def _rank(rank: int, port: int, repeats: int, out: str, patch: int, filters: int) -> None:
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import SegResNet
    from omegaconf import OmegaConf
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from recipes.components.training import loop
    from recipes.components.training.checkpoint import Progress
    from recipes.components.training.distributed import init_distributed
    from recipes.components.training.optim import Schedule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cuda = torch.cuda.device_count() >= 2
    dist = init_distributed(torch.device("cuda" if cuda else "cpu"), 5)
    device = dist.device
    torch.manual_seed(0)
    model = SegResNet(3, filters, 2, 2).to(device)
    ddp = dist.wrap(model)
    calls = [0]

    def counting(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks annotations
        calls[0] += 1
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting)
    gen = torch.Generator().manual_seed(rank)
    batches = [
        {
            "image": torch.randn(1, 2, patch, patch, patch, generator=gen),
            "label": (torch.rand(1, 1, patch, patch, patch, generator=gen) > 0.9).float(),
        }
        for _ in range(MICRO_BATCHES)
    ]
    tcfg = OmegaConf.create({"accumulate_steps": ACCUMULATE, "amp": "fp32"})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    schedule = Schedule(torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0), "epoch", 1)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    trainee = loop.Trainee(
        ddp, DiceCELoss(to_onehot_y=True, softmax=True), optimizer, schedule, scaler, device, tcfg,
        dist,
    )  # fmt: skip
    recipe_no_sync = loop._no_sync
    times: dict[str, list[float]] = {"no_sync": [], "every": []}
    syncs: dict[str, int] = {}
    try:
        for i in range(repeats + 1):  # the first pair warms up (and lets DDP rebuild buckets)
            for mode in ("no_sync", "every"):
                loop._no_sync = (  # type: ignore[assignment]
                    recipe_no_sync if mode == "no_sync" else lambda m, s: contextlib.nullcontext()
                )
                calls[0] = 0
                start = time.perf_counter()
                loop.train_one_epoch(trainee, batches, 1, Progress())
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                if i:
                    times[mode].append(seconds / (MICRO_BATCHES // ACCUMULATE))
                    syncs[mode] = calls[0]
    finally:
        loop._no_sync = recipe_no_sync  # type: ignore[assignment]
        dist.close()
    if rank == 0:
        Path(out).write_text(json.dumps({"times": times, "syncs": syncs, "cuda": cuda}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(o: Options) -> Outcome:
    import torch.multiprocessing as mp

    repeats = 1 if o.smoke else 2 if o.quick else 5
    patch, filters = (16, 8) if o.smoke else (PATCH, FILTERS)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ddp.json")
        args = (_free_port(), repeats, out, patch, filters)
        mp.start_processes(_rank, args, nprocs=2, join=True, start_method="spawn")
        result: dict[str, Any] = json.loads(Path(out).read_text())
    t = {mode: median(v) for mode, v in result["times"].items()}
    backend = "NCCL, 2 GPUs" if result["cuda"] else "gloo, 2 CPU processes"
    row = Row(
        "DDP accumulate 4: no_sync vs all-reduce every micro-batch",
        f"{t['no_sync']:.2f} s/step, {result['syncs']['no_sync']} all-reduce calls",
        f"{t['every']:.2f} s/step, {result['syncs']['every']} all-reduce calls",
        f"{t['no_sync'] / t['every']:.2f}×",
        "< 1× (info)",
        None,
        f"SegResNet {filters} filters, patch {patch}^3, batch 1 per rank, {backend}; "
        f"{MICRO_BATCHES // ACCUMULATE} optimizer steps a repeat, median of {repeats}",
        {"seconds_per_step": t, **result},
    )
    return Outcome([row], {"ddp": result})
