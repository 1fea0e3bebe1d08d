"""What a profile measures while a recipe trains a few steps: the step clock, memory peaks
(CUDA's allocator, or this process's resident set on a CPU), and out-of-memory errors told
apart from other failures, with the size reached.

The figures are the training's own: the steps run through the recipe's step function, the
loader is the recipe's loader, the clock is the trainer's :class:`LoaderClock`.
"""

from __future__ import annotations

import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from recipes.components.data.seeding import resident_bytes

#: Steps left out of the averages: the first starts the workers, plans kernels and grows
#: the allocator's pools.
WARMUP_STEPS = 1


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA out-of-memory, or the CPU allocator refusing (``can't allocate memory``)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


def tried_to_allocate_gb(err: BaseException) -> float | None:
    """The allocation that failed, from the allocator's message, GiB."""
    text = str(err)
    if found := re.search(r"tried to allocate ([\d.]+) ?([KMGT]i?B)", text):
        scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[found.group(2)[0]]
        return float(found.group(1)) * scale / 2**30
    if found := re.search(r"allocate (\d+) bytes", text):
        return int(found.group(1)) / 2**30
    return None


def peak_memory_gb(device: torch.device) -> dict[str, float]:
    """``gpu_peak_mem_gb`` (allocated) and ``gpu_peak_reserved_gb`` on CUDA; on a CPU the
    process's peak resident set (``ru_maxrss``) as ``peak_rss_gb``."""
    if device.type == "cuda":
        return {
            "gpu_peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30,
            "gpu_peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30}


@dataclass
class StepClock:
    """The ``after_step`` hook of a profile: the time and loader wait at every optimizer
    step; ``report`` is called with the figures so far (a profile killed from outside still
    leaves how far it got)."""

    device: torch.device
    loader_wait: Callable[[], float]
    report: Callable[[dict[str, Any]], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    times: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    patches: list[int] = field(default_factory=list)

    def __call__(self, patches_so_far: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        self.waits.append(self.loader_wait())
        self.patches.append(patches_so_far)
        if self.report is not None:
            self.report(self.figures())

    @property
    def steps(self) -> int:
        return len(self.times)

    def figures(self) -> dict[str, Any]:
        """Step time, data-wait share and patches a step over the steps after the warm-up
        (all of them when there are too few), the memory peaks, and the RSS now."""
        out: dict[str, Any] = {"steps": self.steps, "rss_gb": resident_bytes() / 2**30}
        out.update(peak_memory_gb(self.device))
        if not self.times:
            return out
        first = WARMUP_STEPS if self.steps > WARMUP_STEPS else 0
        t0 = self.times[first - 1] if first else self.started
        w0 = self.waits[first - 1] if first else 0.0
        p0 = self.patches[first - 1] if first else 0
        n, seconds = self.steps - first, self.times[-1] - t0
        out.update(
            measured_steps=n,
            step_s=seconds / n,
            data_wait_fraction=min(1.0, (self.waits[-1] - w0) / seconds) if seconds > 0 else 0.0,
            patches_per_step=(self.patches[-1] - p0) / n,
            warmup_s=(self.times[first - 1] - self.started) if first else 0.0,
        )
        return out
