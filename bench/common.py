"""Shared pieces: the result row, device description, timing helpers, the demo dataset."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# Generated once and reused (deterministic for a seed); bench/results/ is git-ignored.
DEMO_ROOT = RESULTS / "cache" / "demo"


@dataclass
class Row:
    """One line of the results table; ``values`` keeps the raw numbers for the JSON."""

    benchmark: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: informational, no target
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one benchmark returns: table rows, extra markdown, and details for the JSON."""

    rows: list[Row]
    details: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""


@dataclass(frozen=True)
class Options:
    quick: bool


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_device(info: dict[str, Any]) -> str:
    cpu = f"{info['cpu']} ({info['cpu_count']} cores, torch threads {info['torch_threads']})"
    return f"GPU {info['gpu']}; CPU {cpu}" if info.get("cuda") else f"CPU {cpu}, no GPU"


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def sync() -> None:
    """Wait for queued GPU work so that a wall-clock interval covers it (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleave(
    a: Callable[[], object], b: Callable[[], object], repeats: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately (ABBA order), so that load changes on a shared
    machine hit both sides alike; returns the per-repeat seconds of each."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(timed(a))
            tb.append(timed(b))
        else:
            tb.append(timed(b))
            ta.append(timed(a))
    return ta, tb


@lru_cache(maxsize=1)
def demo_root() -> Path:
    """The recipe's default demo dataset (16 cases of 48^3), generated on first use."""
    from recipes.components.data.demo_data import ensure_demo_dataset

    return ensure_demo_dataset(DEMO_ROOT)


def recipe_overrides(quick: bool = False) -> list[str]:
    """Recipe defaults, on the demo data; bf16 autocast where a GPU is there (the intended
    GPU setting), fp32 on CPU (the default). ``quick``: 16^3 patches, 8x less compute per
    step, so that a smoke run stays short; its ratios then describe that smaller cell."""
    import torch

    overrides = ["data=demo", f"data.root={demo_root()}", "training.device=auto"]
    if torch.cuda.is_available():
        overrides.append("training.amp=bf16")
    else:
        # The published sizes are GPU work; on CPU the bench measures the demo's networks.
        overrides.append("model.size=tiny")
    if quick:
        overrides.append("training.patch_size=[16,16,16]")
    return overrides


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"
