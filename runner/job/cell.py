"""The payload every executor runs for a cell: compose the config, train, record the outcome.

It is pickled by submitit and executed in the job's process (a local subprocess, a SLURM
task, a container). It writes only its own attempt's ``status.json`` and ``heartbeat.json``
and the cell's ``run_id``, so the submitter and the job never write the same file.

A DDP cell (``executor.gpus_per_cell: N``) is one submitit job of N tasks, each running this
payload: :func:`distributed_env` exports torch.distributed's ``env://`` variables (submitit's
``TorchDistributedEnvironment``) and the recipe forms the process group. Rank 0 alone
creates/reopens the MLflow run and writes the ledger (status, heartbeat, outcome): the
cell's outcome is rank 0's. The other ranks run the recipe only; a failure on any rank
breaks the group's next collective on the others (gloo/NCCL report a lost peer; a hung
peer hits the group's timeout, ``training.ddp_timeout_min``), so rank 0 records it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import submitit

from recipes.contract import SPOOL_FINAL, StopRequest, TrainResult
from runner import tracking
from runner.executors.resources import gpus_from_env
from runner.job import memory, process, signals, standby
from runner.job.process import CellLost, Heartbeat, failure_reason
from runner.job.signals import Meaning
from runner.ledger import Attempt, Cancel, CellRecord, Status, ledger_hours, write_json_atomic
from runner.matrix.names import STARTED_FIELD, fill_started
from runner.search.prune import Reporter, SearchSpec

__all__ = ["CellJob", "CellLost", "current_job_id", "distributed_env"]

#: What the recipe is told when it is asked to stop, by what asked.
STOP_REASONS = {
    Meaning.CANCEL: "cancelled: runner cancel",
    Meaning.LOST: "lost: stopped from outside the runner",
    Meaning.PREEMPTED: "preempted: SIGTERM",
    Meaning.WARNING: "time limit or preemption warning",
}


@dataclass
class CellJob:
    """Everything a job needs, picklable and free of live handles."""

    matrix: str
    recipe: str
    cell_id: str
    run_name: str
    values: dict[str, Any]
    overrides: list[str]  # base + the cell's own
    cells_dir: str
    attempt: int
    tracking_uri: str
    experiment_id: str
    executor: str
    workdir: str
    commit: str | None = None
    #: A searched or pruned matrix: the metric to track, the cell's trial, ASHA's settings.
    search: SearchSpec | None = None
    #: Submitted ahead of its slot: warm up, then wait for the go (runner.job.standby).
    standby: bool = False

    #: What each signal means to this executor's cells (:mod:`runner.job.signals`).
    signal_meanings: ClassVar[Mapping[int, Meaning]] = signals.LOCAL
    #: The ledger's reason when a LOST signal stops the cell.
    lost_reason: ClassVar[str] = "lost: the job was stopped from outside the runner"

    # This start's state. Every start begins from a fresh copy (a requeue resubmits
    # ``dataclasses.replace(self)``), so none of it crosses into the next start.
    _stop: StopRequest = field(default_factory=StopRequest, init=False, repr=False)
    _in_recipe: bool = field(default=False, init=False, repr=False)
    _stopped_by: Meaning | None = field(default=None, init=False, repr=False)
    #: The handlers ours replaced (submitit's own, on SLURM), by signal.
    _inner: dict[int, Any] = field(default_factory=dict, init=False, repr=False)

    def __call__(self) -> dict[str, Any]:
        try:
            with signals.handling(self.signal_table(), self._on_signal) as inner:
                self._inner = inner
                if self.standby:
                    standby.wait(self, self._attempt())
                return self._run()
        finally:
            process.spare_final_collection()

    def signal_table(self) -> Mapping[int, Meaning]:
        return self.signal_meanings

    def host_name(self) -> str:
        """This process's host as the ledger compares it with its own: a pid is checked
        only on its host (a container's job names one that matches no host)."""
        return socket.gethostname()

    def _attempt(self) -> Attempt:
        return CellRecord(Path(self.cells_dir), self.cell_id).attempt(self.attempt)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        cancel = self._attempt().load(Cancel) is not None
        self.on_signal(signals.meaning(self.signal_table(), signum, cancel), signum, frame)

    def on_signal(self, meaning: Meaning, signum: int, frame: FrameType | None) -> None:
        """Act on a signal (in its handler). CANCEL and LOST act at once: the cell records
        itself cancelled, or lost, as the exception unwinds. But a DDP rank that is training
        asks the recipe to stop instead: every rank gets the signal, at slightly different
        times, and one raising alone could leave a peer blocked in the step's all-reduce
        until it is killed, with nothing recorded; the ranks agree on the stop at their next
        step, rank 0 writes that step's checkpoint, and :meth:`on_interrupted` records it."""
        if int(os.environ.get("WORLD_SIZE") or 1) > 1 and self.request_stop(meaning):
            return
        if meaning is Meaning.CANCEL:
            raise KeyboardInterrupt("cancelled: runner cancel")
        if meaning is Meaning.LOST:
            raise CellLost(self.lost_reason)
        raise RuntimeError(f"signal {signum} ({meaning.value}): nothing handles it here")

    def request_stop(self, meaning: Meaning) -> bool:
        """Ask the recipe to stop at its next step and save (from a signal handler); False
        when no recipe is training now, so that the caller acts at once instead."""
        if not self._in_recipe:
            return False
        self._stop.request(STOP_REASONS[meaning])
        self._stopped_by = self._stopped_by or meaning
        return True

    def on_interrupted(self, result: TrainResult) -> None:
        """The recipe stopped at a step checkpoint because :meth:`request_stop` asked: a
        cancel or a stop from outside is recorded now (a cancel request in the ledger wins
        over whatever asked first); anything else is for :meth:`continue_elsewhere`."""
        if self._stopped_by is Meaning.CANCEL or self._attempt().load(Cancel):
            raise KeyboardInterrupt("cancelled: runner cancel")
        if self._stopped_by is Meaning.LOST:
            raise CellLost(self.lost_reason)
        self.continue_elsewhere(result)

    def continue_elsewhere(self, result: TrainResult) -> None:
        """A backend that continues a stopped cell elsewhere does it here (SLURM requeues and
        never returns). Here nothing will continue it: a failure."""
        raise RuntimeError(f"the recipe stopped ({result.reason}) and nothing requeues it")

    def _run(self) -> dict[str, Any]:
        from recipes.contract import RunContext
        from runner.recipe import Recipe, code_version

        os.chdir(self.workdir)
        process.training_lines_to_stdout()
        # Fail fast when a tracking server is down (MLflow retries for minutes by default):
        # metrics are then spooled and `runner sync` uploads them later.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        record = CellRecord(Path(self.cells_dir), self.cell_id)
        attempt = record.attempt(self.attempt)
        rank, world = distributed_env()
        if rank != 0:
            return self._run_peer(record, RunContext, Recipe)
        started = time.time()
        base = Status(
            host=self.host_name(),
            pid=os.getpid(),
            started=started,
            job_id=current_job_id(),
            # The GPUs its executor gave this process, for GPU-hours (runner.report.gpu_hours);
            # a DDP cell's ranks have one share each.
            gpus=_times(gpus_from_env(os.environ), world),
            code=code_version(),
            memory=memory.snapshot(),
        )
        if attempt.load(Cancel):
            # Cancelled between submission and start (a queued SLURM task, a container that
            # was starting): it never trains.
            cancelled = replace(base, state="cancelled", reason="cancelled", ended=started)
            attempt.save(replace(cancelled, time=time.time()))
            if record.run_id:
                _safe_finish(self.tracking_uri, record.run_id, "cancelled", "cancelled")
            return cancelled.to_json()
        attempt.save(replace(base, state="running", time=started))
        reporter = None
        with Heartbeat(attempt) as heartbeat:
            try:
                # Retried: an array's cells start together on one store.
                base.run_id = tracking.retrying(lambda: self._ensure_run(record, base.code))
                process.tag_remedy(self.tracking_uri, base.run_id, attempt)
                recipe = Recipe.load(self.recipe)
                cfg = recipe.compose(self.overrides)
                if self.search is not None:
                    reporter = Reporter(self.search, _previous_objective(record, self.attempt))
                ctx = RunContext(
                    spool_dir=record.dir / "spool",
                    tracking_uri=self.tracking_uri,
                    run_id=base.run_id,
                    checkpoint_dir=record.checkpoint_dir,
                    progress=heartbeat.beat,
                    should_prune=reporter,
                    stop=self._stop,
                )
                result = self._train(recipe, cfg, ctx)
                if result.status == "interrupted":
                    self.on_interrupted(result)
            except BaseException as exc:
                reason = failure_reason(exc, base.memory)
                requested = attempt.load(Cancel) is not None
                if requested:
                    # `runner cancel` asked for this: whatever the interrupt surfaced as
                    # (C++ code turns it into RuntimeErrors), the cell was cancelled.
                    reason = "cancelled"
                state = "cancelled" if reason == "cancelled" else "failed"
                ended = replace(
                    base,
                    state=state,
                    reason=reason,
                    ended=time.time(),
                    error_tail=None if requested else traceback.format_exc()[-4000:],
                    time=time.time(),
                    objective=reporter.best if reporter else None,
                )
                attempt.save(ended)
                if base.run_id:
                    _log_hours(self.tracking_uri, base.run_id, record, base.gpus)
                    _safe_finish(self.tracking_uri, base.run_id, state, reason)
                if requested:  # asked for, recorded: nothing went wrong, no traceback
                    print("cancelled (runner cancel): recorded", file=sys.stderr, flush=True)
                    return ended.to_json()
                raise
        run_id = base.run_id
        state, reason = result.status, result.reason
        if attempt.load(Cancel):
            # The cancel arrived as training ended (or its signal was lost): a cancelled
            # cell never turns done.
            state, reason = "cancelled", "cancelled"
        outcome = replace(
            base,
            state=state,
            reason=reason,
            best_val_dice=result.best_val_dice,
            best_epoch=result.best_epoch,
            # getattr: a recipe built against an older contract returns no selection.
            select_metric=getattr(result, "select_metric", None),
            select_mode=getattr(result, "select_mode", None),
            best_metric=getattr(result, "best_metric", None),
            epochs=result.epochs_completed,
            resumed_from_epoch=result.resumed_from_epoch,
            ended=time.time(),
            time=time.time(),
        )
        if reporter is not None:
            outcome.objective, outcome.rung = reporter.best, reporter.pruned_rung
            try:
                reporter.finish(state)
            except Exception:
                # The journal is unreachable: the ledger holds the outcome; the study only
                # misses this trial's end (TPE sees one result fewer).
                traceback.print_exc()
        # Counted to the end the status will say, so that the figure is the ledger's to the
        # last digit and `runner report` finds nothing to rewrite.
        _log_hours(self.tracking_uri, run_id, record, base.gpus, outcome.ended)
        try:
            tracking.retrying(lambda: tracking.finish_run(self.tracking_uri, run_id, state, reason))
        except Exception:
            # The server went away: the ledger holds the truth; `runner sync` ends the run.
            write_json_atomic(
                record.dir / "spool" / SPOOL_FINAL,
                {"run_id": run_id, "state": state, "reason": reason, "time": time.time()},
            )
        attempt.save(outcome)
        return outcome.to_json()

    def _run_peer(self, record: CellRecord, context: Any, recipe_cls: Any) -> dict[str, Any]:
        """A DDP rank other than 0: the recipe only, no ledger, no run of its own (rank 0
        logs). Its errors end it (rank 0 sees the group break and records the failure); a
        stop ends it quietly: rank 0 requeues the whole job or records the outcome."""
        if record.attempt(self.attempt).load(Cancel):
            return {"state": "cancelled"}
        recipe = recipe_cls.load(self.recipe)
        cfg = recipe.compose(self.overrides)
        ctx = context(
            spool_dir=record.dir / "spool",
            tracking_uri=self.tracking_uri,
            run_id=record.run_id or "",
            checkpoint_dir=record.checkpoint_dir,
            stop=self._stop,
        )
        result = self._train(recipe, cfg, ctx)
        return {"state": result.status, "reason": result.reason}

    def _train(self, recipe: Any, cfg: Any, ctx: Any) -> TrainResult:
        """The recipe's training, with :meth:`request_stop` armed while it runs: a stop
        signal outside it (setup, logging the outcome) is acted on at once instead."""
        self._in_recipe = True
        try:
            return recipe.train_fn()(cfg, ctx)
        finally:
            self._in_recipe = False

    def _ensure_run(self, record: CellRecord, code: dict[str, Any] | None = None) -> str:
        tags = tracking.cell_tags(
            self.matrix, self.cell_id, self.values, self.executor, self.commit
        )
        tags.update(tracking.code_tags(code or {}))
        if self.search is not None and self.search.trial_number is not None:
            tags["runner.study"] = str(self.search.study)
            tags["runner.trial"] = str(self.search.trial_number)
        run_id = record.run_id or tracking.find_run(
            self.tracking_uri, self.experiment_id, self.cell_id
        )
        if run_id:
            record.set_run_id(run_id)
            tracking.reopen_run(self.tracking_uri, run_id, tags)
        else:  # a template's {started} is this first start's time: a resume reopens the run
            name = fill_started(self.run_name, time.time())
            started = tracking.start_cell_run(self.tracking_uri, self.experiment_id, name, tags)
            run_id = record.set_run_id(started)
        if STARTED_FIELD in self.run_name:  # the run's name, recorded once in the ledger
            record.set_run_name(tracking.run_name(self.tracking_uri, run_id))
        return run_id


def distributed_env() -> tuple[int, int]:
    """(rank, world size) of this process in its cell: (0, 1) unless the job has several
    tasks, for which torch.distributed's env:// variables (MASTER_ADDR/PORT, RANK,
    WORLD_SIZE, LOCAL_RANK) are exported through submitit's TorchDistributedEnvironment.

    A task that sees all of the cell's GPUs (the local executor gives each task the cell's
    list) keeps only its own, the ``LOCAL_RANK``-th, so that each rank trains on ``cuda:0``
    of its own; a SLURM task with ``--gpus-per-task`` sees one GPU already."""
    try:
        world = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not a submitit job (a container's entry point, a test)
        return 0, 1
    if world <= 1:
        return 0, 1
    env = submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if len(visible) == env.local_world_size > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[env.local_rank]
    return env.rank, env.world_size


def _times(gpus: int | None, world: int) -> int | None:
    return None if gpus is None else gpus * world


def _previous_objective(record: CellRecord, attempt: int) -> float | None:
    """The best value of the search metric reached by the cell's earlier attempts (a resumed
    cell does not validate those epochs again)."""
    best = None
    for a in record.attempts():
        if a.number < attempt:
            value = (a.load(Status) or Status()).objective
            best = value if value is not None else best
    return best


def current_job_id() -> str | None:
    """The executor's id of the job this process runs in (``123_4`` for a SLURM array task),
    as the ledger and ``squeue`` write it."""
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        if os.environ.get(var):
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            return (
                f"{os.environ[var]}_{task}"
                if task and var == "SLURM_ARRAY_JOB_ID"
                else os.environ[var]
            )
    return None


def _log_hours(
    uri: str, run_id: str, record: CellRecord, gpus: int | None, now: float | None = None
) -> None:
    """The cell's GPU-hours so far (the ledger's attempts, a running one counted to ``now``)
    on its run; ``runner report`` refines them with SLURM accounting. Best effort: the
    ledger keeps what it is made of."""
    try:
        gpu_h, wall_h = ledger_hours(record, gpus, now)
        tracking.log_gpu_hours(uri, run_id, gpu_h, wall_h)
    except Exception:
        traceback.print_exc()


def _safe_finish(uri: str, run_id: str, state: str, reason: str) -> None:
    """Best effort: the ledger already holds the truth if the tracking store is down."""
    try:
        tracking.finish_run(uri, run_id, state, reason)
    except Exception:
        traceback.print_exc()
