"""Log a recipe run to MLflow through ``MlflowClient`` only.

The client API addresses runs by id and never touches MLflow's global "active run", so a
recipe can log into a run that its runner created (and will end) without interfering with
anything else in the process.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)
from omegaconf import DictConfig, OmegaConf

from recipes.contract import SPOOL_METRICS, SPOOL_TAGS, redact, store_init_lock


def flatten_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, str]:
    """Resolved config as ``{"a.b.c": str(value)}``; lists stay one value (``[32, 32]``).

    Values are cut to MLflow's length limit so that a long list never fails a whole batch;
    values under secret-looking keys are redacted.
    """
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            value = redact(prefix, str(node))
            flat[prefix[:MAX_ENTITY_KEY_LENGTH]] = value[:MAX_PARAM_VAL_LENGTH]

    walk(tree, "")
    return flat


def _append(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def spool_metrics(spool_dir: Path, metrics: list[Metric]) -> None:
    _append(
        spool_dir / SPOOL_METRICS,
        [
            {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
            for m in metrics
        ],
    )


def spool_tag(spool_dir: Path, key: str, value: str) -> None:
    _append(spool_dir / SPOOL_TAGS, [{"key": key, "value": value}])


def metric_key(name: str) -> str:
    """MLflow keys allow alphanumerics and ``_-./ ``; anything else becomes ``_``."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class RunLogger:
    """Logs params, metrics and the config of one MLflow run.

    ``owns_run``: the recipe created the run (standalone) and must end it; under a runner the
    run belongs to the runner, which sets its final status.
    """

    def __init__(
        self, tracking_uri: str, run_id: str, owns_run: bool, spool_dir: Path | None = None
    ) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        self.owns_run = owns_run
        self.spool_dir = spool_dir

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, run_name: str | None = None) -> RunLogger:
        """Create a run of ``experiment`` (created if missing) for a standalone recipe run."""
        with store_init_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            found = client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=run_name)
        return cls(tracking_uri, run.info.run_id, owns_run=True)

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_config(self, cfg: DictConfig, artifact_file: str = "config.yaml") -> None:
        self.client.log_text(self.run_id, OmegaConf.to_yaml(cfg, resolve=True), artifact_file)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One batch per call; non-finite values are skipped (MLflow stores them badly)."""
        now = get_current_time_millis()
        items = [
            Metric(metric_key(k), float(v), now, step)
            for k, v in metrics.items()
            if math.isfinite(float(v))
        ]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            batch = items[i : i + MAX_METRICS_PER_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception:
                if self.spool_dir is None:
                    raise
                # The server is unreachable: keep the metrics for `runner sync`; training goes
                # on (the epoch's work is worth more than a live chart).
                spool_metrics(self.spool_dir, batch)

    def set_tag(self, key: str, value: str) -> None:
        try:
            self.client.set_tag(self.run_id, key, value)
        except Exception:
            if self.spool_dir is None:
                raise
            spool_tag(self.spool_dir, key, value)

    def end(self, status: str) -> None:
        """End the run with ``status`` (FINISHED/FAILED/KILLED) if this logger created it."""
        if self.owns_run:
            self.client.set_terminated(self.run_id, status=status)
