"""MLflow system metrics (``system/*``: CPU, memory, disk, network; GPU utilisation, memory
and power through NVML) for the run a recipe logs into, from MLflow's own monitor.

``training.system_metrics``: ``auto`` (on for CUDA runs, off on the CPU, where they mostly
chart the data loader), ``on`` or ``off``; ``training.system_metrics_interval_s`` is the
sampling period. Only the process that logs (rank 0 of a DDP cell) samples: one series per
run, of that rank's node. The monitor runs in a daemon thread and stops at the end of the
training, or by itself once the run is no longer RUNNING.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from recipes.components.training.mlflow_logging import RunLogger

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


def system_metrics_mode(value: Any) -> str:
    """``training.system_metrics`` as one of MODES (YAML reads a bare on/off as a bool)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = str(value).strip().lower()
    if mode not in MODES:
        raise ValueError(
            f"training.system_metrics must be one of {', '.join(MODES)}, got {value!r}"
        )
    return mode


def start_system_metrics(
    mode: Any,
    tracking_uri: str,
    run_id: str,
    device: torch.device,
    interval_s: float = 10.0,
    resumed: bool = False,
) -> Callable[[], None]:
    """Start MLflow's SystemMetricsMonitor on ``run_id`` when ``mode`` asks for it; return
    the function that stops it (and flushes its last samples). ``resumed``: continue the
    ``system/*`` steps of an earlier attempt instead of writing over them."""
    wanted = system_metrics_mode(mode)
    if wanted == "off" or (wanted == "auto" and device.type != "cuda"):
        return lambda: None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=float(interval_s),
        samples_before_logging=1,
        resume_logging=resumed,
        tracking_uri=tracking_uri,
    )
    monitor.start()
    log.info("system metrics every %.3g s into run %s", float(interval_s), run_id)

    def finish() -> None:
        # The monitor's thread drops the sample it holds when it is stopped, and a short or
        # CPU-starved run may end before its first one is logged: one last sample, taken
        # here once the thread is done, so that every monitored run has its system metrics.
        monitor.finish()
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # the store went away: the metrics are a nicety
            log.warning("last system metrics sample not logged: %s", exc)

    return finish


def monitor_run(
    tcfg: DictConfig, logger: RunLogger, device: torch.device, resumed: bool
) -> Callable[[], None]:
    """:func:`start_system_metrics` as a recipe asks for it: ``training.system_metrics`` and
    ``training.system_metrics_interval_s``, on the logger's run, by the process that logs
    (rank 0 of a DDP cell)."""
    return start_system_metrics(
        tcfg.get("system_metrics", "auto") if logger.enabled else "off",
        logger.tracking_uri,
        logger.run_id,
        device,
        tcfg.get("system_metrics_interval_s", 10.0),
        resumed=resumed,
    )
