"""What one optimisation step needs in any recipe: autocast by name, plain tensors on the
device, fp32 outputs for the loss, and a named error when the loss stops being finite.

Mixed precision: bf16 autocast needs nothing else; fp16 autocast needs a GradScaler, since
float16 gradients underflow.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
from monai.data import MetaTensor

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(Exception):
    """The loss (or a sample) became NaN/inf; the message says where."""


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """bf16/fp16 autocast (CPU or CUDA), or nothing for fp32."""
    if amp in AMP_DTYPES:
        return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
    if amp == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"training.amp must be bf16, fp16 or fp32, got {amp!r}")


def on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A plain tensor on ``device``: MetaTensor tracks metadata through every op, and the
    training math does not need it."""
    return (x.as_tensor() if isinstance(x, MetaTensor) else x).to(device, non_blocking=True)


def as_float(output: Any) -> Any:
    """The network output in fp32 (a tensor, or deep supervision's list of tensors), so the
    loss reduces in full precision."""
    if isinstance(output, (list, tuple)):
        return [o.float() for o in output]
    return output.float()


def optimizer_steps_per_epoch(batches: int, accumulate: int) -> int:
    return -(-batches // max(1, accumulate))


class LoaderClock:
    """A loader that also measures how long the step waited for each batch.

    ``data_wait_fraction`` (wait / epoch time) is the number behind "the GPU idles between
    batches": near 0 the model is the bottleneck, near 1 the loader is (more workers,
    prefetch, caching). Iterates and measures exactly what the wrapped loader yields.
    """

    def __init__(self, loader: Any, wait_s: float = 0.0) -> None:
        self.loader = loader
        self.wait_s = wait_s  # an epoch resumed mid-way starts from what it had waited

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - start
            yield batch


def throughput(
    clock: LoaderClock, seconds: float, samples: int, patch: Any, device: torch.device
) -> dict[str, float]:
    """Per-epoch throughput metrics: samples and voxels a second, the share of the epoch
    spent waiting on the loader, and on CUDA the peak memory (reset for the next epoch)."""
    voxels = samples * math.prod(int(s) for s in patch)
    out = {
        "samples_per_s": samples / seconds,
        "voxels_per_s": voxels / seconds,
        "data_wait_fraction": min(1.0, clock.wait_s / seconds),
    }
    if device.type == "cuda":
        out["gpu_peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out
