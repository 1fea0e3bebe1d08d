"""One typed record per file of an attempt (``attempts/NNNN/<file>.json``), each with its one
writer: the runner reads and writes them only through :meth:`Attempt.load` and
:meth:`Attempt.save` (``runner.ledger.store``).

============  ================================  ==============================================
file          record                            written by
============  ================================  ==============================================
claim.json    :class:`Claim`                    the sweep that won the attempt (mkdir)
job.json      :class:`Job`                      the submitter, once the executor took the job
go.json       :class:`Go`                       the local queue: a warm standby's slot is free
status.json   :class:`Status`                   the job: running, then its outcome
heartbeat     :class:`Heartbeat`                the job, every few seconds while it runs
monitor.json  :class:`Monitor`                  the watcher (a sweep) or reconciliation: how
                                                the executor saw a job end without a word
cancel.json   :class:`Cancel`                   ``runner cancel``: the request, then stopped
slurm.json    :class:`Slurm`                    a SLURM job: its starts and requeues
docker.json   :class:`Docker`                   the docker backend: container, image, GPUs
remedy.json   :class:`Remedy`                   the sweep that claimed an attempt which runs
                                                with out-of-memory remedies
============  ================================  ==============================================

A key a record does not know (written by a newer runner) is kept in ``extra`` and written
back as it was, so that no version of the runner drops another's information.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


@dataclass(kw_only=True)
class Record:
    FILE: ClassVar[str]

    time: float = 0.0  # when it was written
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        extra = data.pop("extra")
        return {**extra, **data}


@dataclass(kw_only=True)
class Claim(Record):
    FILE = "claim"

    host: str | None = None
    pid: int | None = None
    executor: str | None = None


@dataclass(kw_only=True)
class Job(Record):
    FILE = "job"

    job_id: str | None = None
    executor: str | None = None


@dataclass(kw_only=True)
class Go(Record):
    """A warm standby may start (runner.job.standby): the freed slot's GPUs and threads."""

    FILE = "go"

    gpus: list[int] = field(default_factory=list)
    threads: int | None = None


@dataclass(kw_only=True)
class Status(Record):
    """``running`` while the job runs, then its outcome (``state`` is a ledger state)."""

    FILE = "status"

    state: str = "running"
    host: str | None = None
    pid: int | None = None
    job_id: str | None = None
    run_id: str | None = None
    started: float | None = None
    ended: float | None = None
    #: The GPUs its executor gave the job (None: it could not tell).
    gpus: int | None = None
    reason: str | None = None
    error_tail: str | None = None
    best_val_dice: float | None = None
    best_epoch: int | None = None
    #: The recipe's selection (``training.select``): the metric that chose best_epoch, which
    #: way is better (max | min) and its best value. None: a recipe that selects on val Dice.
    select_metric: str | None = None
    select_mode: str | None = None
    best_metric: float | None = None
    epochs: int | None = None
    resumed_from_epoch: int | None = None
    #: A searched cell: the best value of the search metric, the rung it was pruned at.
    objective: float | None = None
    rung: int | None = None
    #: SLURM: how often it requeued itself so far (the attempt reads ``submitted`` meanwhile).
    requeues: int | None = None
    #: The code it trains with (runner.recipe.code_version: digest, commit, dirty).
    code: dict[str, Any] | None = None
    #: Its memory cgroup, limit and the kernel's OOM-kill counters at start
    #: (runner.job.memory.snapshot): what tells an OOM kill from another death later.
    memory: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Heartbeat(Record):
    """The recipe's latest progress report (epoch, max_epochs, batch, loss...)."""

    FILE = "heartbeat"

    @property
    def progress(self) -> dict[str, Any]:
        return self.extra

    @property
    def epoch(self) -> int:
        return int(self.extra.get("epoch") or 0)


@dataclass(kw_only=True)
class Monitor(Record):
    FILE = "monitor"

    state: str = "failed"
    reason: str = "lost"
    log: str | None = None
    tail: str | None = None


@dataclass(kw_only=True)
class Cancel(Record):
    FILE = "cancel"

    pid: int | None = None
    #: When ``runner cancel`` saw every process of the cell gone.
    stopped: float | None = None


@dataclass(kw_only=True)
class Slurm(Record):
    FILE = "slurm"

    job_id: str | None = None
    host: str | None = None
    starts: int = 0
    restarts: int = 0
    requeues: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class Docker(Record):
    FILE = "docker"

    container_id: str | None = None
    image: str | None = None
    image_id: str | None = None
    gpu: int | None = None  # the first (a one-GPU cell's only) GPU
    gpus: list[int] = field(default_factory=list)
    ranks: int | None = None
    network: str | None = None
    user: str | None = None


@dataclass(kw_only=True)
class Remedy(Record):
    """The out-of-memory remedies an attempt runs with (``on_oom`` in the matrix): all of
    them so far, cumulative, so that every later attempt of the cell keeps them."""

    FILE = "remedy"

    #: Every remedy step in force, in the order they were added.
    steps: list[str] = field(default_factory=list)
    #: The Hydra overrides they add to the cell's own, cumulative.
    overrides: list[str] = field(default_factory=list)
    #: The step this attempt added (None: it only keeps the earlier ones).
    added: str | None = None
    #: What the added step changed: config key -> [before, after].
    changed: dict[str, list[Any]] = field(default_factory=dict)
    #: The reason of the attempt it answers (``oom: gpu: ...``).
    after: str | None = None
    #: Whether the checkpoint of the earlier attempts is resumed (False: set aside, the
    #: attempt trains from scratch in a new MLflow run).
    resumes: bool = True
    #: Steps passed over as not applicable to this cell, with why.
    skipped: dict[str, str] = field(default_factory=dict)
