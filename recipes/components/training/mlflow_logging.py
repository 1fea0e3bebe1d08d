"""Log a recipe run to MLflow through ``MlflowClient`` only.

The client API addresses runs by id and never touches MLflow's global "active run", so a
recipe can log into a run that its runner created (and will end) without interfering with
anything else in the process.

Many cells write one store at once (a SLURM array on one sqlite file, a busy tracking
server): a write that fails for a reason that passes ("database is locked", a refused
connection) is tried again with a growing pause, and when the store stays unusable the
values go to the cell's spool, which ``runner status``/``sweep``/``resume`` (and ``runner
sync``) upload once the cell has ended. The recipe's logging never fails its cell, and
never loses a metric, because of the tracking store.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

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

from recipes.contract import SPOOL_METRICS, SPOOL_TAGS, RunContext, redact, store_init_lock


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


def spool_params(spool_dir: Path, params: list[Param]) -> None:
    """Params share the tags' file, marked ``"kind": "param"`` (sync logs them as params)."""
    _append(
        spool_dir / SPOOL_TAGS, [{"key": p.key, "value": p.value, "kind": "param"} for p in params]
    )


T = TypeVar("T")

#: Tries of one store write before its values go to the spool, and the pause after the
#: first failure (doubled each time). MLflow's sqlite sessions already wait 20 s on a lock.
ATTEMPTS = 3
PAUSE_S = 1.0
#: MLflow error codes of a store that may answer in a moment (a locked sqlite file, a
#: server under load); any other MlflowException is the request's own fault.
TRANSIENT = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")


def transient(exc: Exception) -> bool:
    """A failure worth trying again: connection and OS errors, or a transient MLflow code."""
    code = getattr(exc, "error_code", None)
    return code is None or code in TRANSIENT


def metric_key(name: str) -> str:
    """MLflow keys allow alphanumerics and ``_-./ ``; anything else becomes ``_``."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class RunLogger:
    """Logs params, metrics and the config of one MLflow run.

    ``owns_run``: the recipe created the run (standalone) and must end it; under a runner the
    run belongs to the runner, which sets its final status. ``enabled=False`` (the ranks of
    a DDP cell but rank 0) writes nothing: each metric reaches the run once per step.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        owns_run: bool,
        spool_dir: Path | None = None,
        attempts: int = ATTEMPTS,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        self.owns_run = owns_run
        self.spool_dir = spool_dir
        self.attempts = attempts
        #: The last write went to the spool: try the store once per write, not ``attempts``
        #: times, until it answers again (an epoch must not wait on a store that is down).
        self.store_down = False

    def _write(self, call: Callable[[], T]) -> T | None:
        """``call`` against the store, tried again on transient failures; raises the last."""
        if not self.enabled:
            return None
        tries = 1 if self.store_down else self.attempts
        for i in range(tries):
            try:
                out = call()
            except Exception as exc:
                if i == tries - 1 or not transient(exc):
                    self.store_down = True
                    raise
                time.sleep(PAUSE_S * 2**i)
            else:
                self.store_down = False
                return out
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _write_or_spool(self, call: Callable[[], None], spool: Callable[[Path], None]) -> None:
        try:
            self._write(call)
        except Exception as exc:
            if self.spool_dir is None:
                raise
            # Training goes on: the epoch's work is worth more than a live chart, and the
            # spool is uploaded once the cell has ended.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            print(f"mlflow_logging: store unusable ({first}); spooled", file=sys.stderr)
            spool(self.spool_dir)

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
            batch = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._write_or_spool(
                lambda b=batch: self.client.log_batch(self.run_id, params=b),
                lambda spool, b=batch: spool_params(spool, b),
            )

    def log_config(self, cfg: DictConfig, artifact_file: str = "config.yaml") -> None:
        """The resolved config as an artifact; under a runner a store that stays unusable
        skips it (the ledger and the matrix hold the config) rather than fail the cell."""
        text = OmegaConf.to_yaml(cfg, resolve=True)
        try:
            self._write(lambda: self.client.log_text(self.run_id, text, artifact_file))
        except Exception as exc:
            if self.spool_dir is None:
                raise
            print(f"mlflow_logging: {artifact_file} not logged ({exc})", file=sys.stderr)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One batch per call; non-finite values are skipped (MLflow stores them badly)."""
        now = get_current_time_millis()
        items = [
            Metric(metric_key(k), float(v), now, step)
            for k, v in metrics.items()
            if math.isfinite(float(v))
        ]
        self._log_metric_batches(items)

    def log_series(self, rows: Iterable[tuple[str, float, int]]) -> None:
        """``(key, value, step)`` rows, each at its own step (per-step series), batched as
        :meth:`log_metrics`; non-finite values are skipped."""
        now = get_current_time_millis()
        items = [
            Metric(metric_key(k), float(v), now, int(step))
            for k, v, step in rows
            if math.isfinite(float(v))
        ]
        self._log_metric_batches(items)

    def _log_metric_batches(self, items: list[Metric]) -> None:
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            batch = items[i : i + MAX_METRICS_PER_BATCH]
            # A retried batch that had reached the store is not doubled: the store keeps one
            # row per (key, step, timestamp, value), and so does sync.
            self._write_or_spool(
                lambda b=batch: self.client.log_batch(self.run_id, metrics=b),
                lambda spool, b=batch: spool_metrics(spool, b),
            )

    def set_tag(self, key: str, value: str) -> None:
        self._write_or_spool(
            lambda: self.client.set_tag(self.run_id, key, value),
            lambda spool: spool_tag(spool, key, value),
        )

    def end(self, status: str) -> None:
        """End the run with ``status`` (FINISHED/FAILED/KILLED) if this logger created it."""
        if self.owns_run:
            self._write(lambda: self.client.set_terminated(self.run_id, status=status))


def log_split(logger: RunLogger, record: Mapping[str, Any]) -> None:
    """The split (``data.loaders.split_record``): method, case counts and channels as params,
    the case ids as ``split.json``."""
    if not logger.enabled:
        return
    logger.log_params(
        {
            "split.method": record["method"],
            "split.n_train": str(len(record["train"])),
            "split.n_val": str(len(record["val"])),
            "split.channels": ",".join(record["channels"]),
        }
    )
    logger.client.log_dict(logger.run_id, dict(record), "split.json")


def open_run_logger(
    cfg: DictConfig,
    ctx: RunContext | None,
    main: bool = True,
    share: Callable[[Any], Any] = lambda value: value,
    run_name: Callable[[], str] | None = None,
) -> RunLogger:
    """The recipe's logger: into the runner's run (``ctx``), else a run of its own. ``main``:
    this process logs (rank 0 of a DDP group; the others get a silent logger); ``share``:
    rank 0's value on every rank, so that a standalone DDP run (torchrun) has one run, whose
    id all ranks use (it names the checkpoint directory)."""
    if ctx is not None:
        return RunLogger(ctx.tracking_uri, ctx.run_id, False, ctx.spool_dir, enabled=main)
    uri, name = cfg.tracking.uri, run_name() if run_name else None
    own = RunLogger.start(uri, cfg.tracking.experiment, name) if main else None
    run_id = share(own.run_id if own else None)
    return own or RunLogger(uri, run_id, owns_run=False, enabled=False)
