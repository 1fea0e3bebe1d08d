"""A no-op Hydra app over the segmentation recipe's configs: the baseline for planning.

``python bench/hydra_app.py --multirun <sweep>`` makes Hydra's BasicLauncher compose and set
up every job of the sweep, as ``python -m recipes.segmentation --multirun`` would, but the
task does nothing except stamp the time, so the gap between stamps is Hydra's cost per job.
Run as a script (not ``-m``) so that ``config_path`` is relative to this file.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../recipes/segmentation/conf", config_name="config")
def main(cfg: DictConfig) -> None:
    print(f"BENCH_JOB {time.perf_counter():.6f}", flush=True)


if __name__ == "__main__":
    main()
