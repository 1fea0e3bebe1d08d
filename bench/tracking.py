"""Benchmark 3: MLflow tracking overhead inside the real trainer.

One real ``train(cfg, ctx)`` run of the default cell, logging into a run that the runner's
own code created in a real sqlite store (as a cell does). The logger is the recipe's
``RunLogger`` with its per-epoch ``log_metrics`` switched on for even epochs and off for odd
ones, so on/off epochs alternate in the same process on the same data. Epoch time is taken
between the trainer's progress callbacks, i.e. the whole epoch loop body including logging.
The recipe logs once per epoch, never per step, so step time cannot change; the time spent
inside the logging calls is also measured directly, which stays precise on a busy machine.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from bench.common import Options, Outcome, Row, fmt_s, median, recipe_overrides

DEFAULT_EPOCHS = 12  # training/default.yaml: the fixed costs are spread over a whole cell


def _logger_class(stats: dict[str, Any]) -> type:
    from recipes.components.training.mlflow_logging import RunLogger

    class TogglingLogger(RunLogger):
        """The recipe's logger; per-epoch metrics skipped while ``enabled`` is False."""

        enabled = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            super().__init__(*args, **kwargs)
            stats["fixed_s"]["client"] = time.perf_counter() - start
            stats["logger"] = self

        def log_params(self, params: Mapping[str, str]) -> None:
            start = time.perf_counter()
            super().log_params(params)
            stats["fixed_s"]["log_params"] = time.perf_counter() - start

        def log_config(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            super().log_config(*args, **kwargs)
            stats["fixed_s"]["log_config"] = time.perf_counter() - start

        def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
            if self.enabled:
                start = time.perf_counter()
                super().log_metrics(metrics, step)
                stats["log_metrics_s"].append(time.perf_counter() - start)

    return TogglingLogger


def run(opts: Options) -> Outcome:
    from recipes.components.training import mlflow_logging
    from recipes.contract import RunContext
    from recipes.segmentation import train as train_module
    from runner import tracking
    from runner.recipe import Recipe

    pairs = 1 if opts.quick else 3
    # Epoch 1 warms up; then on/off pairs; the last epoch also validates and is left out.
    epochs = 2 * pairs + 2
    overrides = [
        *recipe_overrides(opts.quick, opts.smoke),
        f"training.max_epochs={epochs}",
        "training.val_interval=1000",
    ]
    cfg = Recipe.load("segmentation").compose(overrides)
    stats: dict[str, Any] = {"fixed_s": {}, "log_metrics_s": []}
    stamps: list[float] = []

    def progress(info: dict[str, Any]) -> None:
        stamps.append(time.perf_counter())
        stats["logger"].enabled = (info["epoch"] + 1) % 2 == 0  # log even epochs only

    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlruns.db'}"
        # Once per sweep, not per cell: creating the store's tables and the experiment.
        exp = tracking.ensure_experiment(uri, "bench", Path(tmp) / "mlartifacts")
        start = time.perf_counter()
        run_id = tracking.start_cell_run(uri, exp, "bench-cell", {"runner.cell_id": "bench"})
        stats["fixed_s"]["run_creation"] = time.perf_counter() - start
        ctx = RunContext(uri, run_id, Path(tmp) / "ckpt", progress)
        # Where the recipe's run frame builds its logger (open_run_logger).
        with mock.patch.object(mlflow_logging, "RunLogger", _logger_class(stats)):
            start = time.perf_counter()
            train_module.train(cfg, ctx)
            stats["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        tracking.finish_run(uri, run_id, "done")
        stats["fixed_s"]["finish_run"] = time.perf_counter() - start

    deltas = [b - a for a, b in itertools.pairwise(stamps)]  # epochs 2..E
    on = deltas[0 : 2 * pairs : 2]  # epochs 2, 4, ...
    off = deltas[1 : 2 * pairs : 2]  # epochs 3, 5, ...
    epoch_on, epoch_off = median(on), median(off)
    paired = median([a / b for a, b in zip(on, off, strict=True)])
    per_epoch_log = median(stats["log_metrics_s"])
    direct = 1 + per_epoch_log / epoch_off
    fixed = sum(stats["fixed_s"].values())
    cell_s = DEFAULT_EPOCHS * epoch_off
    details = {
        "epochs_on_s": on,
        "epochs_off_s": off,
        "log_metrics_s": stats["log_metrics_s"],
        "fixed_s": stats["fixed_s"],
        "train_s": stats["train_s"],
    }
    rows = [
        Row(
            "MLflow on vs off: epoch time (A/B)",
            fmt_s(epoch_on),
            fmt_s(epoch_off),
            f"{paired:.3f}×",
            "≤ 1.01×",
            paired <= 1.01,
            f"{pairs} on/off epoch pairs of one real train() run; median of paired ratios; "
            "sqlite store",
            {"epoch_on_s": epoch_on, "epoch_off_s": epoch_off, "paired_ratio": paired},
        ),
        Row(
            "MLflow per-epoch logging, measured directly",
            f"{fmt_s(per_epoch_log)}/epoch",
            fmt_s(epoch_off),
            f"{direct:.4f}×",
            "≤ 1.01×",
            direct <= 1.01,
            "time inside log_metrics (one log_batch) over the epoch without it; steps log nothing",
            {"log_metrics_s": per_epoch_log, "ratio": direct},
        ),
        Row(
            f"MLflow fixed cost per cell vs {DEFAULT_EPOCHS}-epoch training",
            fmt_s(fixed),
            fmt_s(cell_s),
            f"{1 + fixed / cell_s:.4f}×",
            "— (info)",
            None,
            "run creation, client, params, config artifact, end of run (store already "
            "open, mlflow imported: the cold path is in the start-latency benchmark)",
            {"fixed_s": fixed, "cell_train_s_est": cell_s},
        ),
    ]
    return Outcome(rows, details)
