"""Which GPU the next container gets: a free-list that never oversubscribes.

Each GPU has ``cells_per_gpu`` places; a cell takes the GPU with the most free places (so
that cells spread over GPUs before they share one) and gives it back in ``release``.
"""

from __future__ import annotations

from collections import Counter


class GpuPool:
    def __init__(self, gpus: list[int], cells_per_gpu: int) -> None:
        self.gpus = list(dict.fromkeys(gpus))  # order kept, duplicates dropped
        self.cells_per_gpu = cells_per_gpu
        self.free: Counter[int] = Counter({g: cells_per_gpu for g in self.gpus})
        self.held: dict[str, int] = {}  # job id -> GPU

    @property
    def size(self) -> int:
        return len(self.gpus) * self.cells_per_gpu

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
