"""What a runner hands to a recipe's ``train`` and what it gets back, and the few formats
both sides must agree on: the spool of metrics kept while MLflow is down, which config keys
are secrets, and the lock around a sqlite store's first use.

This is the only module of ``recipes`` the runner imports. Kept free of torch and MLflow
imports so that planning a matrix stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from omegaconf import DictConfig

# --- the spool: what a cell keeps under ``RunContext.spool_dir`` while MLflow is down -------
#: One JSON object a line: {"key", "value", "timestamp", "step"}; appended by the recipe.
SPOOL_METRICS = "metrics.jsonl"
#: One JSON object a line: {"key", "value"} (a tag) or {"key", "value", "kind": "param"};
#: appended by the recipe.
SPOOL_TAGS = "tags.jsonl"
#: {"run_id", "state", "reason", "time"}: the cell's outcome, written by the runner's job.
SPOOL_FINAL = "final.json"

# --- secrets: keys whose values must never reach a tracking server (a config may pull them
# from the environment with ${oc.env:...}); params and tags alike log them as REDACTED -----
SECRET_KEY = re.compile(
    r"(token|passw|secret|api_?key|access_?key|private_?key|credential)", re.IGNORECASE
)
REDACTED = "***redacted***"


def redact(key: str, value: str) -> str:
    return REDACTED if SECRET_KEY.search(key) else value


@contextlib.contextmanager
def store_init_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise first use of a local sqlite store across processes: MLflow creates and
    migrates its tables on first connection, and two processes doing that at once corrupt
    the file ("table _alembic_tmp_... already exists"). Other stores need nothing. (sqlite
    stores are local files; on NFS use a tracking server.)"""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


TrainStatus = Literal["done", "diverged", "pruned", "interrupted"]


class StopRequest:
    """ "Stop at the next step and save": set by the runner, read by the recipe.

    The runner's job sets it from a signal handler (SLURM's time-limit warning, a preemption),
    so it holds one plain attribute and takes no lock: a handler that ran while the main
    thread held a lock would deadlock. The recipe checks it after every optimizer step; once
    set it writes a step checkpoint (the position inside the epoch included), and returns
    status "interrupted", so that the next attempt continues from that very step.
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:  # the first reason is the one that counts
            self.reason = reason

    def __bool__(self) -> bool:
        return self.reason is not None


@dataclass
class RunContext:
    """Where a recipe logs and checkpoints when a runner drives it.

    tracking_uri / run_id: an MLflow run that already exists (the runner created it with its
        name and tags); the recipe logs params, metrics and artifacts into it and must not
        end it: the runner sets its final status.
    checkpoint_dir: the recipe saves ``last.pt`` (and ``best.pt``) here and, when
        ``last.pt`` exists at start, resumes from it.
    progress: called after every epoch with a small dict (epoch, max_epochs, train_loss,
        val_dice when validated) so that the runner can show live progress and heartbeats.
    spool_dir: where metrics go when the tracking server can't be reached (one JSON line
        each); ``runner sync`` uploads them later. None: such failures are errors.
    should_prune: called after each validation, once that epoch's checkpoint is saved and
        its metrics logged, with the epoch and the metrics; a reason (a string) means stop
        now: the recipe returns status "pruned" with that reason (a search's pruner).
    stop: see :class:`StopRequest`; None: nothing outside asks the recipe to stop early.
    """

    tracking_uri: str
    run_id: str
    checkpoint_dir: Path
    progress: Callable[[dict[str, Any]], None] | None = None
    spool_dir: Path | None = None
    should_prune: Callable[[int, dict[str, float]], str | None] | None = None
    stop: StopRequest | None = None


@dataclass
class TrainResult:
    """The outcome of one training run.

    status: "done" when training ran to its end (or stopped early on purpose),
        "diverged" when the loss became NaN/inf: such a run is never "done", "pruned" when
        ``RunContext.should_prune`` stopped it (its checkpoint can continue it later),
        "interrupted" when ``RunContext.stop`` was set: its step checkpoint is written and
        the next attempt continues from it (``reason`` says why it stopped).
    best_epoch: the epoch ``best.pt`` holds, chosen by ``select_metric`` (``select_mode``:
        max or min; the recipe's ``training.select``, val_dice / max by default), whose best
        value is ``best_metric``; ``best_val_dice`` is the val Dice of that epoch.
    """

    status: TrainStatus
    epochs_completed: int
    best_val_dice: float | None = None
    best_epoch: int | None = None
    resumed_from_epoch: int | None = None
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None
    select_metric: str = "val_dice"
    select_mode: str = "max"


class TrainFn(Protocol):
    def __call__(self, cfg: DictConfig, ctx: RunContext | None = None) -> TrainResult: ...


# --- test time: what a runner hands to a recipe's ``predict`` and ``evaluate`` -------------
class PredictInputError(ValueError):
    """The inputs of a prediction or evaluation are wrong (a missing channel file, a wrong
    channel count, no test split, ...); the message names the file, what is missing and
    what is valid. The runner shows it as one line, without a traceback."""


@dataclass
class ModelRef:
    """One trained model: its composed config and the checkpoint to load (best.pt/last.pt)."""

    config: DictConfig
    checkpoint: Path
    name: str = ""  # how outputs and errors name it (a run name)


@dataclass
class PredictRequest:
    """Predict label maps (and optionally probabilities) with one model or an ensemble.

    models: more than one: their probabilities are averaged (seeds, folds, or cells of
    different architectures: the softmax, or the head maps of ``task=em_instance``).
    input_dir: nnU-Net-named inputs, ``CASE_0000.nii.gz``, ... one file per channel; or
    split="test": the ``data.test`` cases of the first model's data config, with labels.
    settings: ``predict.*`` keys over the config's (sw_overlap, sw_mode, sw_batch_size, ...).
    check_only: list and check the inputs (cases, channels, files), load no model.
    """

    models: list[ModelRef]
    output_dir: Path
    input_dir: Path | None = None
    split: Literal["test"] | None = None
    tta: bool = False
    save_probabilities: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    check_only: bool = False
    progress: bool = True


@dataclass
class PredictedCase:
    case: str
    prediction: Path | None  # CASE.nii.gz (stacks: CASE_pred.h5) in output_dir (None: check_only)
    label: Path | None = None  # the reference, for split="test"
    probabilities: Path | None = None  # CASE.npz with "probabilities" (C, X, Y, Z)
    mask: Path | None = None  # split="test" of a stack layout: the region that is scored


@dataclass
class PredictResult:
    cases: list[PredictedCase]
    class_names: tuple[str, ...]  # index = label value
    channel_names: tuple[str, ...]  # the channels read, in the network's order
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateRequest:
    """Score predictions against references (nnU-Net's ``summary.json``).

    Either folders (``pred_dir`` + ``labels_dir``, files ``CASE<file_ending>``), glob
    patterns in their place (EM stacks: ``preds/vol*_im_pred.h5`` and
    ``test/vol*_vesicle_ins.h5``, paired by what their wildcards match, ``mask_pattern`` the
    same way), or explicit ``pairs`` of (case, prediction, reference) with ``masks`` by case.
    ``labels``: label value -> name (foreground and background); None: from
    ``dataset_json``, else the values found in the references. HDF5 / TIFF files are read as
    stacks (dataset ``dataset_key``), their spacing ``voxel_size`` (z, y, x in nm; None:
    voxels). ``instances``: score instance segmentations (adapted Rand error, VI, foreground
    Dice) instead of classes; ``binary_reference``: references hold instance ids scored as one
    foreground class (semantic models of instance data).
    """

    pred_dir: Path | None = None
    labels_dir: Path | None = None
    pairs: list[tuple[str, Path, Path]] | None = None
    dataset_json: Path | None = None
    labels: dict[int, str] | None = None
    file_ending: str = ".nii.gz"
    tolerance_mm: float = 2.0  # normalised surface Dice tolerance
    masks: dict[str, Path] | None = None
    mask_pattern: str | None = None
    instances: bool = False
    binary_reference: bool = False
    dataset_key: str | None = "main"
    voxel_size: tuple[float, float, float] | None = None


class PredictFn(Protocol):
    def __call__(self, request: PredictRequest) -> PredictResult: ...


class EvaluateFn(Protocol):
    def __call__(self, request: EvaluateRequest) -> dict[str, Any]: ...
