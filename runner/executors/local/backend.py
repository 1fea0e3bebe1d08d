"""Local processes through submitit's LocalExecutor: ``slots`` cells at once, one GPU each
(``gpus_per_cell`` GPUs and as many processes each for DDP cells).

submitit's LocalExecutor starts every submitted job at once, so the runner keeps the queue
(see :mod:`runner.sweep.queue`) and this backend only hands out threads and GPUs.

``gpus_per_cell: N`` runs a cell as N submitit tasks (``tasks_per_node``) that see the
cell's N GPUs; :class:`~runner.job.cell.CellJob` turns them into a torch.distributed group
(rank r uses the r-th GPU). On a machine without GPUs the N tasks train on the CPU with
gloo (a warning says so): that is how DDP is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import select
import signal
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.local import local as submitit_local

from runner.executors.base import Backend
from runner.executors.local.options import LocalExecutorOptions
from runner.executors.resources import GpuPool, check_gpus_per_cell, threads_per_cell, visible_gpus
from runner.job import memory
from runner.job.cell import CellJob
from runner.ledger import Attempt, CellRecord, Go, Status

#: How long ``kill`` waits for SIGKILLed processes to be gone.
KILL_REAP_S = 10.0


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, options: LocalExecutorOptions, folder: Path) -> None:
        super().__init__(options, folder)
        self.executor = submitit.LocalExecutor(folder=folder)
        self.gpus = GpuPool(list(options.gpus if options.gpus is not None else visible_gpus()))
        n = options.gpus_per_cell
        # A DDP cell's processes share the cell's cores.
        self.threads = max(1, threads_per_cell(options.threads_per_cell, options.slots) // n)
        self.held: dict[str, list[int]] = {}  # job id -> the GPUs of a multi-GPU cell
        self.attempts: dict[str, Attempt] = {}  # job id -> its ledger attempt (end_reason)

    @property
    def slots(self) -> int:
        n, size = self.options.gpus_per_cell, self.gpus.size
        # A DDP cell holds n GPUs: never start one that would find too few.
        return min(self.options.slots, size // n) if n > 1 and size >= n else self.options.slots

    def preflight(self) -> None:
        check_gpus_per_cell("local", self.options.gpus_per_cell, list(self.gpus.gpus))

    def submit(self, jobs: Sequence[CellJob]) -> list[submitit.Job[Any]]:
        out = []
        n = self.options.gpus_per_cell
        for job in jobs:
            gpus = [self.gpus.take() for _ in range(n)] if self.gpus.room() >= n else []
            t = self.threads
            self.executor.update_parameters(
                timeout_min=self.options.timeout_min,
                gpus_per_node=len(gpus),
                visible_gpus=tuple(gpus),
                tasks_per_node=n,
                # Threads are set per cell so that `slots` cells share the cores, not fight.
                setup=[f"export OMP_NUM_THREADS={t} MKL_NUM_THREADS={t}"],
            )
            with _controller_in_its_own_session():
                sj = self.executor.submit(job)
            if gpus:
                self.held[sj.job_id] = gpus
            self.attempts[sj.job_id] = CellRecord(Path(job.cells_dir), job.cell_id).attempt(
                job.attempt
            )
            out.append(sj)
        return out

    def submit_standby(self, job: CellJob) -> submitit.Job[Any] | None:
        """Start ``job`` ahead of its slot (:mod:`runner.job.standby`): no GPU yet, the
        cells' threads. None for DDP cells (each rank would wait), or with ``standby: false``."""
        if not self.options.standby or self.options.gpus_per_cell > 1:
            return None
        t = self.threads
        self.executor.update_parameters(
            timeout_min=self.options.timeout_min,
            gpus_per_node=0,
            visible_gpus=(),
            tasks_per_node=1,
            setup=[f"export OMP_NUM_THREADS={t} MKL_NUM_THREADS={t}"],
        )
        with _controller_in_its_own_session():  # a sweep's Ctrl-C is not the cell's
            return self.executor.submit(dataclasses.replace(job, standby=True))

    def wake(self, job: submitit.Job[Any]) -> Go:
        """A free slot's GPU for a standby (as :meth:`submit` would have given it one)."""
        gpus = [self.gpus.take()] if self.gpus.room() else []
        if gpus:
            self.held[job.job_id] = gpus
        return Go(gpus=gpus, threads=self.threads)

    def wait(self, jobs: Sequence[submitit.Job[Any]], timeout_s: float) -> None:
        """Until a job's controller exits (a pidfd turns readable) or ``timeout_s``: the queue
        hands a freed slot on at once instead of at its next look."""
        fds = []
        try:
            for job in jobs:
                try:
                    fds.append(os.pidfd_open(int(job.job_id)))
                except (OSError, ValueError):
                    return  # gone already (or no pid): the queue looks now
            select.select(fds, [], [], timeout_s)
        finally:
            for fd in fds:
                os.close(fd)

    def end_reason(self, job: submitit.Job[Any]) -> str:
        """A cell's process that is gone without an outcome: killed by the kernel's OOM
        killer (its memory cgroup's counter rose since it started, or the kernel's log names
        it) reads ``oom: host``; anything else is lost."""
        attempt = self.attempts.get(job.job_id)
        status = attempt.load(Status) if attempt else None
        if status is not None and status.pid and status.memory is not None:
            evidence = memory.kill_evidence(status.memory, [status.pid], machine_wide=False)
            if evidence:
                return f"oom: host: the cell's process (pid {status.pid}) was killed; {evidence}"
        return super().end_reason(job)

    def cancel(self, job_ids: list[str]) -> list[str]:
        """Interrupt each job's task processes (SIGINT): the cell then records itself as
        cancelled and closes its MLflow run as KILLED before it exits, and submitit's
        controller, seeing its task end, ends too. The job id is the pid of the shell that
        runs the controller; neither is signalled: the controller would forward SIGINT and
        SIGKILL the task one second later (and ignores it when started with SIGINT ignored)."""
        stopped = []
        for job_id in job_ids:
            if not _is_controller(job_id):
                continue
            tasks = [p for p in _descendants(int(job_id)) if _cmdline_has(p, b"core._submit")]
            # The tasks themselves, not their DataLoader workers (forked: same command line),
            # which the task stops as it unwinds.
            workers = {c for t in tasks for c in _children(t)}
            for pid in tasks:
                if pid not in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGINT)
            stopped.append(job_id)
        return stopped

    def alive(self, job_ids: list[str]) -> list[str]:
        return [j for j in job_ids if _is_controller(j)]

    def kill(self, job_ids: list[str]) -> None:
        """SIGKILL every process under each controller (the tasks and their DataLoader
        workers), deepest first, and wait until they are gone: the controller's shell may
        end before a killed grandchild has (``alive`` would then say nothing runs)."""
        doomed: list[int] = []
        for job_id in job_ids:
            if _is_controller(job_id):
                doomed += _descendants(int(job_id))
        for pid in reversed(doomed):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_REAP_S
        while any(_running(pid) for pid in doomed) and time.monotonic() < deadline:
            time.sleep(0.05)

    def release(self, job: submitit.Job[Any]) -> None:
        self.attempts.pop(job.job_id, None)
        for gpu in self.held.pop(job.job_id, []):
            self.gpus.give_back(gpu)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has released everything; its parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _cmdline_has(pid: int, text: bytes) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _is_controller(job_id: str) -> bool:
    """Whether ``job_id`` (a pid) still runs a submitit controller, never a recycled pid."""
    return job_id.isdigit() and _cmdline_has(int(job_id), b"submitit.local._local")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    out, frontier = [], [pid]
    while frontier:
        children = [c for p in frontier for c in _children(p)]
        out.extend(children)
        frontier = children
    return out


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@contextlib.contextmanager
def _controller_in_its_own_session() -> Iterator[None]:
    """submitit starts each job's controller as a child of the sweep, in the sweep's process
    group: a terminal's Ctrl-C for the sweep reached the controller too, which then killed
    its cell. A sweep's Ctrl-C must stop the sweep, not the cells (runner.cli.submitting):
    for the moment of one submission, the controller's Popen starts a session of its own.
    submitit has no option for it; this is the only change to how it starts the process."""
    real = submitit_local.subprocess
    shim = types.SimpleNamespace(**vars(real))
    shim.Popen = functools.partial(real.Popen, start_new_session=True)
    submitit_local.subprocess = shim  # type: ignore[assignment]
    try:
        yield
    finally:
        submitit_local.subprocess = real
