"""The frame of every recipe's ``train``: the lines before its setup and around its loop,
which are the same in every recipe, so that a ``train.py`` holds only its own setup and loop::

    dist = start_process(cfg)  # seed, threads, the DDP group and this rank's device
    ...                        # the recipe's setup: model, data, loss, optimizer
    with open_run(cfg, ctx, dist) as run:  # MLflow logger, checkpoint dir, system metrics
        with dist.peers_guarded():
            return run.record(_train_loop(...))  # the recipe's own loop, in its train.py
    # cleanup on leaving the block: system metrics stop, the MLflow run ends, the group is left

How the MLflow run ends is decided here alone: FINISHED when the loop returns "done";
KILLED on "interrupted" (a stop request: a step checkpoint to continue from) or on a
``KeyboardInterrupt`` (a cancel); FAILED on "diverged", "pruned" or any other exception.
Under a runner ``RunLogger.end`` is a no-op: the runner owns the run and sets its status.

The setup between ``start_process`` and ``open_run`` is outside the cleanup, as it was
when each recipe spelled these lines out: a failing setup leaves with its exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from recipes.components.training.checkpoint import LAST
from recipes.components.training.distributed import Dist, init_distributed
from recipes.components.training.mlflow_logging import RunLogger, open_run_logger
from recipes.components.training.setup import (
    avoid_onednn_bf16_backward,
    checkpoint_dir,
    resolve_device,
    seed_everything,
    standalone_run_name,
)
from recipes.components.training.system_metrics import monitor_run
from recipes.contract import RunContext, TrainResult, TrainStatus

__all__ = ["MLFLOW_STATUS", "TrainingRun", "open_run", "start_process"]

#: The MLflow status a result's status ends a standalone run with; any other: FAILED.
MLFLOW_STATUS: dict[TrainStatus, str] = {"done": "FINISHED", "interrupted": "KILLED"}


def start_process(cfg: DictConfig) -> Dist:
    """Seed, torch's thread count, the DDP group (a group of one outside DDP) and this
    rank's device: what every recipe does before it builds anything."""
    tcfg = cfg.training
    seed_everything(cfg.seed, tcfg.deterministic)
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    dist = init_distributed(resolve_device(tcfg.device), tcfg.get("ddp_timeout_min", 30))
    avoid_onednn_bf16_backward(dist.device, tcfg.amp)
    return dist


@dataclass
class TrainingRun:
    """The run a recipe's loop logs and checkpoints into, and the status it will end with."""

    logger: RunLogger
    ckpt_dir: Path
    #: Until :meth:`record` sees a result: a loop that raises fails the run.
    mlflow_status: str = "FAILED"

    def record(self, result: TrainResult) -> TrainResult:
        """``result``, unchanged; the run ends with the MLflow status it maps to."""
        self.mlflow_status = MLFLOW_STATUS.get(result.status, "FAILED")
        return result


@contextlib.contextmanager
def open_run(cfg: DictConfig, ctx: RunContext | None, dist: Dist) -> Iterator[TrainingRun]:
    """The recipe's MLflow run (the runner's under ``ctx``, else one of its own) and its
    checkpoint directory, with MLflow's system metrics sampled while the block runs; on
    leaving it, the sampling stops, the run ends (see the module doc) and the DDP group is
    left, whatever the loop did."""
    logger = open_run_logger(cfg, ctx, dist.main, dist.share, standalone_run_name)
    run = TrainingRun(logger, checkpoint_dir(cfg, ctx, logger.run_id))
    # A resumed attempt continues the system/* steps of the earlier ones.
    resumed = (run.ckpt_dir / LAST).exists()
    stop_system_metrics = monitor_run(cfg.training, logger, dist.device, resumed=resumed)
    try:
        yield run
    except KeyboardInterrupt:  # a cancel: the run was stopped, it did not fail
        run.mlflow_status = "KILLED"
        raise
    finally:
        stop_system_metrics()
        logger.end(run.mlflow_status)
        dist.close()
