"""Shared pieces: the result row, device description, timing helpers, the demo dataset."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
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
#: The start-latency child's label for a warm standby's wait (bench/startup*.py).
WAITING = "waiting for the go"
#: A smoke run's dataset: 6 cases of 24^3 (5 train, 1 validation), generated in a second.
SMOKE_ROOT = RESULTS / "cache" / "demo-smoke"


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
    #: ``--smoke``: tiny sizes, seconds each, every code path of each benchmark run; the
    #: figures mean nothing (the suite runs this, tests/test_bench.py). Implies ``quick``.
    smoke: bool = False


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


#: Runs several child scripts in one process: ``[[script, args...], ...]`` as JSON in argv[1].
_TOGETHER = r"""
import json, sys
for script, *args in json.loads(sys.argv[1]):
    sys.argv = ["-c", *args]
    exec(compile(script, "<child>", "exec"), {"__name__": "__main__"})
    print("BENCH_CHILD_END", flush=True)
"""


def run_children(
    children: Sequence[tuple[str, Sequence[str]]],
    env: dict[str, str],
    together: bool = False,
    timeout: float = 900,
) -> list[str]:
    """The last stdout line of each ``python -c SCRIPT ARGS`` child, each in a fresh process
    (what its figures need: peak memory of its own), or with ``together`` all in one
    process, one after another: a smoke run's way to pay the imports once (each then sees
    what the ones before left; a smoke run reads no figure)."""

    def run_python(argv: list[str], what: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{what} failed: {out.stderr[-1500:]}")
        return out.stdout

    if not together:
        return [
            run_python([script, *args], f"child {list(args)}").strip().splitlines()[-1]
            for script, args in children
        ]
    batch = json.dumps([[script, *args] for script, args in children])
    stdout = run_python([_TOGETHER, batch], "children")
    parts = stdout.split("BENCH_CHILD_END")[: len(children)]
    return [part.strip().splitlines()[-1] for part in parts]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of the children it has waited for."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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


@lru_cache(maxsize=2)
def demo_root(smoke: bool = False) -> Path:
    """The recipe's default demo dataset (16 cases of 48^3), generated on first use; with
    ``smoke``, a small one (:data:`SMOKE_ROOT`)."""
    from recipes.components.data.demo_data import ensure_demo_dataset

    if smoke:
        return ensure_demo_dataset(SMOKE_ROOT, cases=6, size=24)
    return ensure_demo_dataset(DEMO_ROOT)


def recipe_overrides(quick: bool = False, smoke: bool = False) -> list[str]:
    """Recipe defaults, on the demo data; bf16 autocast where a GPU is there (the intended
    GPU setting), fp32 on CPU (the default). ``quick``: 16^3 patches, 8x less compute per
    step, so that a quick run stays short; its ratios then describe that smaller cell.
    ``smoke``: that on the small dataset too (implies ``quick``)."""
    import torch

    quick = quick or smoke
    root = demo_root(smoke)
    overrides = ["data=demo", f"data.root={root}", "training.device=auto"]
    if torch.cuda.is_available():
        overrides.append("training.amp=bf16")
    else:
        # The published sizes are GPU work; on CPU the bench measures the demo's networks.
        overrides.append("model.size=tiny")
    if quick:
        overrides.append("training.patch_size=[16,16,16]")
    return overrides


def times(a: float, b: float) -> str:
    """``a / b`` as ``1.23×``; ``—`` when ``b`` is 0 (a smoke run's tiny sizes can leave a
    memory figure at 0)."""
    return f"{a / b:.2f}×" if b else "—"


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"
