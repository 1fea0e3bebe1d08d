"""MLflow bookkeeping on the runner's side: one experiment per matrix, one run per cell.

The runner creates each cell's run (name and tags) and ends it with the cell's outcome; the
recipe logs params, metrics and artifacts into it. Runs are found again by the ledger's
``run_id`` file, or by the ``runner.cell_id`` tag if a job died between creating the run
and recording it, so an attempt never opens a second run for the same cell.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from recipes.contract import redact, store_init_lock
from runner.errors import RunnerError

if TYPE_CHECKING:
    from mlflow import MlflowClient

TAG_CELL = "runner.cell_id"
TAG_MATRIX = "runner.matrix"
TAG_STATE = "runner.state"
#: The out-of-memory remedies a run trained with (runner.sweep.remedies).
TAG_REMEDY = "runner.remedy"
AXIS_PREFIX = "axis."


class TrackingUnavailable(RunnerError):
    pass


def resolve_uri(uri: str, base: Path) -> str:
    """Make a local store's path absolute, so jobs in any working directory share it."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///') :]).absolute()}"
    if "://" not in uri and not uri.startswith("databricks"):
        return (base / uri).absolute().as_uri()
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one clear line when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(
            f"the MLflow tracking server {uri} does not answer "
            f"({reason}); start it or fix tracking.uri"
        ) from None


def client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def open_store(uri: str) -> None:
    """Open the store as a process's first call does (MLflow's client, the store's engine
    and schema check, cached for the process), so that its later calls find it open: a warm
    standby's head start (runner.job.standby)."""
    with store_init_lock(uri):
        client(uri).search_experiments(max_results=1)


def ensure_experiment(uri: str, name: str, artifact_root: Path | None = None) -> str:
    """The experiment id for ``name``, created if needed (artifacts beside a local store)."""
    try:
        with store_init_lock(uri):
            return _ensure_experiment(uri, name, artifact_root)
    except Exception as exc:  # MLflow, SQLAlchemy and OS errors alike: the store is unusable
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TrackingUnavailable(f"cannot use the MLflow tracking store {uri}: {first}") from None


def _ensure_experiment(uri: str, name: str, artifact_root: Path | None) -> str:
    from mlflow.exceptions import MlflowException

    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if artifact_root is not None and not uri.startswith(("http://", "https://")):
        location = (artifact_root / name).absolute().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another sweep
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def git_commit(workdir: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def cell_tags(
    matrix: str, cell_id: str, values: dict[str, object], executor: str, commit: str | None
) -> dict[str, str]:
    tags = {
        TAG_MATRIX: matrix,
        TAG_CELL: cell_id,
        "runner.executor": executor,
        "runner.host": socket.gethostname(),
    }
    tags.update({f"{AXIS_PREFIX}{k}": redact(k, str(v)) for k, v in values.items()})
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


#: A cell's run that ``runner rerun`` replaced by a new one (kept, never logged to again).
TAG_SUPERSEDED = "runner.superseded"


def code_tags(code: dict[str, object]) -> dict[str, str]:
    """The code a cell trained with as run tags (runner.recipe.code_version)."""
    tags = {"runner.code_digest": str(code["digest"])} if code.get("digest") else {}
    if code.get("dirty") is not None:
        tags["runner.git_dirty"] = str(bool(code["dirty"])).lower()
    return tags


def find_run(uri: str, experiment_id: str, cell_id: str) -> str | None:
    """The cell's current run (a superseded one is not)."""
    runs = client(uri).search_runs(
        [experiment_id], f"tags.`{TAG_CELL}` = '{cell_id}'", max_results=100
    )
    current = [r for r in runs if r.data.tags.get(TAG_SUPERSEDED) != "true"]
    return current[0].info.run_id if current else None


def supersede(uri: str, run_id: str, attempt: int) -> None:
    """Mark a cell's run as replaced by a rerun from attempt ``attempt`` on (kept as it is)."""
    c = client(uri)
    c.set_tag(run_id, TAG_SUPERSEDED, "true")
    c.set_tag(run_id, "runner.superseded_at_attempt", str(attempt))


def tag_remedy(
    uri: str, run_id: str, attempt: int, steps: list[str], changed: dict[str, Any]
) -> None:
    """Mark a run trained (from ``attempt`` on) with out-of-memory remedies: the tag
    ``runner.remedy`` (``grad_checkpointing+halve_batch``) and each value a remedy changed as
    the param ``remedy.<attempt>.<key>`` (params are write-once: the key names the attempt)."""
    c = client(uri)
    c.set_tag(run_id, TAG_REMEDY, "+".join(steps))
    params = {f"remedy.{attempt}.{key}": str(pair[-1]) for key, pair in changed.items()}
    have = c.get_run(run_id).data.params
    _log_params(c, run_id, {k: v for k, v in params.items() if k not in have})


def axis_params(tags: dict[str, str]) -> dict[str, str]:
    """The ``axis.*`` tags again as params: the UI's compare view ("show diff only") and
    parallel-coordinates chart read params, not tags. Values are the tags' (redacted)."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    return {k: v[:MAX_PARAM_VAL_LENGTH] for k, v in tags.items() if k.startswith(AXIS_PREFIX)}


def _log_params(c: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        c.log_batch(run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])


def start_cell_run(uri: str, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    c = client(uri)
    run_id = c.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    _log_params(c, run_id, axis_params(tags))
    return run_id


def run_name(uri: str, run_id: str) -> str:
    """The name an MLflow run was created with."""
    return str(client(uri).get_run(run_id).info.run_name or "")


def reopen_run(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Mark a resumed run as running again, refreshing host/executor tags.

    Axis params the run lacks (it was created before they were logged, or its job died
    between creating it and logging them) are added; those it has are left alone, since
    MLflow refuses to change a param's value."""
    c = client(uri)
    c.update_run(run_id, status="RUNNING")
    for k in ("runner.host", "runner.executor"):
        if k in tags:
            c.set_tag(run_id, k, tags[k])
    wanted = axis_params(tags)
    if wanted:
        have = c.get_run(run_id).data.params
        _log_params(c, run_id, {k: v for k, v in wanted.items() if k not in have})


def finish_run(uri: str, run_id: str, state: str, reason: str | None = None) -> None:
    c = client(uri)
    c.set_tag(run_id, TAG_STATE, state)
    if reason:
        c.set_tag(run_id, "runner.reason", reason[:5000])
    status = {"done": "FINISHED", "cancelled": "KILLED", "pruned": "KILLED"}.get(state, "FAILED")
    c.set_terminated(run_id, status=status)


T = TypeVar("T")
#: MLflow error codes of a store that may answer in a moment (a locked sqlite file, a busy
#: server); the recipe's logger (recipes/components/training/mlflow_logging.py) uses the same.
TRANSIENT = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")


def retrying(call: Callable[[], T], attempts: int = 3, pause_s: float = 1.0) -> T:
    """``call`` against the store, again after a growing pause when it fails for a reason
    that passes: an array's cells start together, and one that can't create its run fails."""
    for i in range(attempts):
        try:
            return call()
        except Exception as exc:
            code = getattr(exc, "error_code", None)
            if i == attempts - 1 or (code is not None and code not in TRANSIENT):
                raise
            time.sleep(pause_s * 2**i)
    raise AssertionError("unreachable")


def log_gpu_hours(uri: str, run_id: str, hours: float, wall_hours: float | None = None) -> None:
    """Set ``gpu_hours`` (and ``wall_hours``) on a cell's MLflow run: the latest value is the
    cell's total so far, so logging it again after a resume replaces it in the UI."""
    figures = {"gpu_hours": hours}
    if wall_hours is not None:
        figures["wall_hours"] = wall_hours
    log_figures(uri, run_id, figures)


def log_figures(uri: str, run_id: str, figures: Mapping[str, float]) -> None:
    """These metrics on a run at step 0, in one call."""
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now_ms, 0) for key, value in figures.items()]
    client(uri).log_batch(run_id, metrics=metrics)
