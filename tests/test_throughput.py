"""Throughput a user can see per epoch: samples and voxels a second, the share of the epoch
the step waited on the loader (the ink-detection group's "GPU idles between batches")."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from recipes.components.training.step import LoaderClock, throughput
from recipes.segmentation.train import train
from tests.test_recipe_train import tiny_cfg, workdir  # noqa: F401 - the fixture


def test_the_clock_measures_what_the_loader_makes_the_step_wait() -> None:
    def slow_loader():  # a loader that needs 30 ms for each of its 5 batches
        for i in range(5):
            time.sleep(0.03)
            yield i

    class Sized:
        def __len__(self) -> int:
            return 5

        def __iter__(self):
            return slow_loader()

    clock = LoaderClock(Sized())
    start = time.perf_counter()
    assert list(clock) == [0, 1, 2, 3, 4] and len(clock) == 5
    for _ in range(2):
        time.sleep(0.02)  # the "step": not counted as waiting
    seconds = time.perf_counter() - start
    assert 0.15 <= clock.wait_s < seconds
    metrics = throughput(clock, seconds, 10, [4, 4, 2], torch.device("cpu"))
    assert metrics["voxels_per_s"] == metrics["samples_per_s"] * 32
    assert 0.5 < metrics["data_wait_fraction"] <= 1.0
    assert "gpu_peak_mem_gb" not in metrics  # CUDA only


def test_every_epoch_reports_throughput(workdir: Path, tmp_path: Path) -> None:  # noqa: F811
    result = train(tiny_cfg(workdir, tmp_path / "ckpt"))
    m = result.metrics
    assert result.status == "done"
    assert 0.0 <= m["data_wait_fraction"] <= 1.0
    assert math.isclose(m["voxels_per_s"], m["samples_per_s"] * 16**3)
    assert np.isfinite(m["samples_per_s"]) and m["samples_per_s"] > 0
