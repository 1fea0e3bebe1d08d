"""What a backend hands each cell on this machine: CPU threads and a GPU.

Shared by the backends that run cells on the local machine (local processes, Docker
containers), so they share cores and GPUs the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping

from runner.errors import RunnerError


def threads_per_cell(requested: int | None, slots: int) -> int:
    """torch/OpenMP threads for each cell: as asked, else the cores shared by the slots, so
    that ``slots`` cells share the cores instead of fighting over them."""
    return requested or max(1, (os.cpu_count() or 1) // max(1, slots))


def check_gpus_per_cell(kind: str, ranks: int, gpus: list[int]) -> None:
    """Before anything is submitted: a DDP cell of ``ranks`` processes needs as many GPUs
    where the executor has any; where it has none, its ranks are CPU processes (gloo)."""
    have = len(gpus)
    if have and ranks > have:
        raise RunnerError(
            f"executor.gpus_per_cell={ranks}, but the {kind} executor has {have} GPU(s) here "
            f"({gpus}): lower gpus_per_cell to at most {have}, or run the cells where there "
            "are more GPUs"
        )
    if ranks > 1 and not have:
        print(
            f"{kind}: no GPU here: each cell runs as {ranks} CPU processes (DDP with gloo)",
            file=sys.stderr,
            flush=True,
        )


def visible_gpus() -> list[int]:
    """GPU ids this machine offers: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.stdout.split() if x.isdigit()]


class GpuPool:
    """Which GPU the next cell gets: a free-list that never oversubscribes.

    Each GPU has ``cells_per_gpu`` places; a cell takes the GPU with the most free places (so
    that cells spread over GPUs before they share one) and gives it back in ``release``.
    """

    def __init__(self, gpus: list[int], cells_per_gpu: int = 1) -> None:
        self.gpus = list(dict.fromkeys(gpus))  # order kept, duplicates dropped
        self.cells_per_gpu = cells_per_gpu
        self.free: Counter[int] = Counter({g: cells_per_gpu for g in self.gpus})
        self.held: dict[str, int] = {}  # job id -> GPU

    @property
    def size(self) -> int:
        return len(self.gpus) * self.cells_per_gpu

    def has_room(self) -> bool:
        return any(self.free[g] > 0 for g in self.gpus)

    def room(self) -> int:
        """Free places over all GPUs (a multi-GPU cell takes several)."""
        return sum(max(0, self.free[g]) for g in self.gpus)

    def take(self) -> int:
        """A GPU with a free place; RuntimeError when none has one (the caller asked for
        more cells than ``slots``, which the scheduler never does)."""
        if not self.gpus:
            raise RuntimeError("no GPUs in this pool")
        gpu = max(self.gpus, key=lambda g: (self.free[g], -self.gpus.index(g)))
        if self.free[gpu] <= 0:
            raise RuntimeError(f"all {len(self.gpus)} GPUs are in use ({self.cells_per_gpu}/GPU)")
        self.free[gpu] -= 1
        return gpu

    def hold(self, job_id: str, gpu: int) -> None:
        self.held[job_id] = gpu

    def give_back(self, gpu: int) -> None:
        self.free[gpu] = min(self.cells_per_gpu, self.free[gpu] + 1)

    def release(self, job_id: str) -> int | None:
        gpu = self.held.pop(job_id, None)
        if gpu is not None:
            self.give_back(gpu)
        return gpu


def gpus_from_env(env: Mapping[str, str]) -> int | None:
    """The GPUs a job process may use, from what its executor set: ``CUDA_VISIBLE_DEVICES``
    (local, SLURM), else ``NVIDIA_VISIBLE_DEVICES`` (docker); None when neither says."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = env.get(var)
        if value is None:
            continue
        if value.strip().lower() in ("", "none", "void", "nodevfiles", "-1"):
            return 0
        if value.strip().lower() == "all":
            continue  # "all" of an unknown number: let the next source say
        return len([x for x in value.split(",") if x.strip() and x.strip() != "-1"])
    return None
