"""Local processes through submitit's LocalExecutor: ``slots`` cells at once, one GPU each.

submitit's LocalExecutor starts every submitted job at once, so the runner keeps the queue
(see :mod:`runner.schedule`) and this backend only hands out threads and GPUs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit

from runner.executors.base import Backend
from runner.job import CellJob
from runner.matrix import LocalExecutorOptions


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


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, options: LocalExecutorOptions, folder: Path) -> None:
        super().__init__(options, folder)
        self.executor = submitit.LocalExecutor(folder=folder)
        self.free_gpus = list(options.gpus if options.gpus is not None else visible_gpus())
        self.gpu_of: dict[str, int] = {}
        cores = os.cpu_count() or 1
        self.threads = options.threads_per_cell or max(1, cores // options.slots)

    @property
    def slots(self) -> int:
        return self.options.slots

    def submit(self, jobs: Sequence[CellJob]) -> list[submitit.Job[Any]]:
        out = []
        for job in jobs:
            gpu = self.free_gpus.pop(0) if self.free_gpus else None
            t = self.threads
            self.executor.update_parameters(
                timeout_min=self.options.timeout_min,
                gpus_per_node=0 if gpu is None else 1,
                visible_gpus=() if gpu is None else (gpu,),
                # Threads are set per cell so that `slots` cells share the cores, not fight.
                setup=[f"export OMP_NUM_THREADS={t} MKL_NUM_THREADS={t}"],
            )
            sj = self.executor.submit(job)
            if gpu is not None:
                self.gpu_of[sj.job_id] = gpu
            out.append(sj)
        return out

    def release(self, job: submitit.Job[Any]) -> None:
        gpu = self.gpu_of.pop(job.job_id, None)
        if gpu is not None:
            self.free_gpus.append(gpu)
