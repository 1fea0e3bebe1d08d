"""Cells in Docker containers on this machine, one GPU (or CPU slot) each, through submitit.

* :class:`DockerBackend` keeps ``slots`` = GPUs x cells_per_gpu (or ``cpu_slots``) cells in
  flight and gives each new container one free GPU through a ``DeviceRequest``. The
  containers themselves are submitit jobs (:mod:`runner.executors.docker.engine`).
* ``gpus_per_cell: N`` (DDP): a cell gets a group of N GPUs in one request (slots = GPUs //
  N x cells_per_gpu), or N CPU processes with gloo, and its container runs the N ranks
  (:mod:`runner.executors.docker.ranks`).
* Paths keep their meaning: the sweep dir, the working directory and a file/sqlite MLflow
  store are mounted read-write at their own host paths, data (``mounts``) read-only.
* The image tag and id go into ``attempts/NNNN/docker.json`` (written by the submitter) and
  onto the MLflow run as ``runner.docker_image`` / ``runner.docker_image_id`` (by the job,
  :mod:`runner.executors.docker.job`).
* The engine may go away (a dockerd restart): the sweep waits for it, up to
  ``engine_wait_s`` past the cells' last heartbeats, then decides; a cell whose container
  died with the daemon ends failed (lost) and resumable, never silently (see
  :class:`~runner.executors.docker.watch.EngineWatch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker.errors
import submitit
from docker.types import DeviceRequest

from runner.errors import RunnerError
from runner.executors.base import Backend
from runner.executors.docker.engine import INCOMPLETE, LABEL, UNREACHABLE, DockerExecutor, client
from runner.executors.docker.job import DockerCellJob
from runner.executors.docker.options import DockerExecutorOptions
from runner.executors.docker.watch import EngineWatch
from runner.executors.resources import GpuPool, check_gpus_per_cell, threads_per_cell, visible_gpus
from runner.job.cell import CellJob
from runner.ledger import Attempt, CellRecord, Docker

__all__ = ["DockerBackend", "DockerCellJob", "DockerExecutor", "DockerExecutorOptions", "client"]


def _store_dir(uri: str) -> str | None:
    """The directory of a file or sqlite MLflow store (mounted read-write), else None."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).absolute().parent)
    if uri.startswith("file://"):
        return urlparse(uri).path
    return None


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class DockerBackend(Backend):
    kind = "docker"
    job_class = DockerCellJob
    # The runner keeps the queue (containers start as GPUs free up); a sweep hands it to a
    # background scheduler and returns, unless asked to --wait.
    modes = ("background", "follow")

    def __init__(self, options: DockerExecutorOptions, folder: Path, start: bool = True) -> None:
        super().__init__(options, folder)
        self.options: DockerExecutorOptions = options
        gpus = options.gpus
        if gpus == "all":
            gpus = visible_gpus()
        self.gpus: list[int] = list(dict.fromkeys(gpus))
        n = options.gpus_per_cell
        # A DDP cell takes a whole group of n GPUs: fixed groups never leave a cell to find
        # n distinct GPUs free scattered over the others' (GPUs beyond the last whole group
        # stay idle; preflight says so). The pool hands out group indices.
        self.groups = [self.gpus[i : i + n] for i in range(0, len(self.gpus) - n + 1, n)]
        self.pool = GpuPool(list(range(len(self.groups))), options.cells_per_gpu)
        self.executor = DockerExecutor(folder, options.python, start=start)
        self.executor.ranks = n
        # A DDP cell's processes share the cell's cores.
        self.threads = max(1, threads_per_cell(options.threads_per_cell, self.slots) // n)
        self._image: tuple[str, str] | None = None
        self._started: dict[str, float] = {}
        self._attempts: dict[str, Attempt] = {}  # job id -> its ledger attempt (heartbeat)
        self._given_up: dict[str, float] = {}  # job id -> seconds the engine was silent
        self.engine = EngineWatch(options.engine_wait_s)
        self._swept = False

    @property
    def slots(self) -> int:
        return self.pool.size or self.options.cpu_slots

    def preflight(self) -> None:
        n, have = self.options.gpus_per_cell, len(self.gpus)
        check_gpus_per_cell("docker", n, list(self.gpus))
        idle = self.gpus[len(self.groups) * n :]
        if idle:
            print(
                f"docker: GPU(s) {idle} stay idle: {have} GPUs make {len(self.groups)} "
                f"group(s) of gpus_per_cell={n}",
                file=sys.stderr,
                flush=True,
            )

    def image(self) -> tuple[str, str]:
        """(tag, image id) of the configured image, looked up once; a clear error if absent."""
        if self._image is None:
            name = self.options.image
            try:
                img = client().images.get(name)
            except docker.errors.ImageNotFound:
                raise RunnerError(
                    f"executor 'docker': image {name!r} is not on this Docker engine; build "
                    "it with `make image` (see containers/README.md)"
                ) from None
            except UNREACHABLE as exc:
                raise RunnerError(f"executor 'docker': no Docker engine answers: {exc}") from exc
            self._image = (name, str(img.id))
        return self._image

    def _remove_leftovers(self, matrix: str) -> None:
        """Remove this matrix's ended containers that an earlier sweep could not (it ended
        while the engine was down): nothing is left behind once the engine is back."""
        if self._swept or self.options.keep_containers:
            return
        self._swept = True
        labels = [f"{LABEL}=docker", f"runner.matrix={matrix}"]
        # Not "created": a concurrent sweep of this matrix may be about to start that one.
        for status in ("exited", "dead"):
            with contextlib.suppress(*UNREACHABLE):
                found = client().api.containers(
                    all=True, filters={"label": labels, "status": status}
                )
                for c in found:
                    with contextlib.suppress(*UNREACHABLE):
                        client().api.remove_container(c["Id"], v=True, force=True)

    def _network(self, uri: str) -> str:
        if self.options.network != "auto":
            return self.options.network
        return "host" if _is_server(uri) else "none"

    def _volumes(self, job: CellJob) -> dict[str, dict[str, str]]:
        rw = [str(Path(self.folder).absolute().parent), str(Path(job.cells_dir).parent)]
        rw += [job.workdir, *filter(None, [_store_dir(job.tracking_uri)])]
        vols: dict[str, dict[str, str]] = {}
        for m in self.options.mounts:  # the user's first; ours override a same target
            vols[m.source] = {"bind": m.target or m.source, "mode": "ro" if m.read_only else "rw"}
        for path in rw:
            vols[path] = {"bind": path, "mode": "rw"}
        return vols

    def _environment(self, gpus: list[int]) -> dict[str, str]:
        env = {n: os.environ[n] for n in self.options.env if n in os.environ}
        if len(gpus) > 1:
            # The container's own numbering (the runtime renumbers its GPUs from 0): each
            # rank keeps the one of its LOCAL_RANK (runner.job.cell.distributed_env), and the
            # ledger counts one GPU per rank.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpus)))
        t = str(self.threads)
        env.update(
            SUBMITIT_EXECUTOR="local",  # submitit's LocalJobEnvironment reads the job id
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS=t,
            MKL_NUM_THREADS=t,
            HOME=env.get("HOME", "/tmp"),  # the uid may have no home in the image
            USER=env.get("USER", getpass.getuser()),  # MLflow's run user, without a passwd entry
        )
        return env

    def submit(self, jobs: Sequence[CellJob]) -> list[submitit.Job[Any]]:
        self.engine.wait_until_up()
        tag, image_id = self.image()
        out: list[submitit.Job[Any]] = []
        if jobs:
            self._remove_leftovers(jobs[0].matrix)
        for job in jobs:
            if _is_server(job.tracking_uri) and self._network(job.tracking_uri) == "none":
                raise RuntimeError(
                    f"executor 'docker': network 'none' cannot reach {job.tracking_uri}; "
                    "use network: host (or bridge with a reachable address)"
                )
            if not isinstance(job, DockerCellJob):
                raise TypeError(f"the docker backend runs DockerCellJobs, not {type(job)}")
            cell = dataclasses.replace(job, docker_image=tag, docker_image_id=image_id)
            group = self.pool.take() if self.pool.gpus else None
            gpus = self.groups[group] if group is not None else []
            shown = ",".join(map(str, gpus))
            labels = {
                LABEL: "docker",
                "runner.matrix": job.matrix,
                "runner.cell": job.cell_id,
                "runner.attempt": str(job.attempt),
            }
            params: dict[str, Any] = {
                "image": tag,
                "labels": labels | ({"runner.gpu": shown} if gpus else {}),
                "environment": self._environment(gpus),
                "volumes": self._volumes(job),
                "working_dir": job.workdir,
                "user": self.options.resolved_user(),
                "network_mode": self._network(job.tracking_uri),
                "shm_size": self.options.shm_size,
                "mem_limit": self.options.mem_limit,
                # Docker's default, said out loud: `docker stop` and a daemon that stops its
                # containers (shutdown, restart) send it; the cell records itself lost, not
                # cancelled (docker_cell). `runner cancel` sends SIGINT (DockerJob.cancel).
                "stop_signal": "SIGTERM",
                "init": True,  # reaps DataLoader workers; forwards signals to the cell
            }
            if gpus:
                params["device_requests"] = [
                    DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])
                ]
            if self.options.gpus_per_cell > 1 and params["network_mode"] == "none":
                # The ranks meet at MASTER_ADDR, the container's hostname (submitit's
                # TorchDistributedEnvironment), which resolves to nothing without a network:
                # name the container and point that name at the loopback.
                params["hostname"] = f"cell-{job.cell_id}"[:63]
                params["extra_hosts"] = {params["hostname"]: "127.0.0.1"}
            self.executor.container = {k: v for k, v in params.items() if v is not None}
            try:
                sj = self.executor.submit(cell)
            except BaseException:
                if group is not None:
                    self.pool.give_back(group)
                raise
            if group is not None:
                self.pool.hold(sj.job_id, group)
            self._started[sj.job_id] = time.time()
            record = CellRecord(Path(job.cells_dir), job.cell_id)
            self._attempts[sj.job_id] = record.attempt(job.attempt)
            info = Docker(
                container_id=sj.job_id,
                image=tag,
                image_id=image_id,
                gpu=gpus[0] if gpus else None,
                gpus=gpus,
                ranks=self.options.gpus_per_cell,
                network=params["network_mode"],
                user=params["user"],
                time=time.time(),
            )
            record.attempt(job.attempt).save(info)
            out.append(sj)
        return out

    def finished(self, job: submitit.Job[Any]) -> bool:
        if not self.engine.answers():
            # Unknown, not ended: wait for the engine (a restart takes seconds) unless it
            # and the cell have both been silent for engine_wait_s.
            self.engine.seen_down.add(job.job_id)
            silent = self.engine.silent_for(self._attempts.get(job.job_id))
            if silent < self.engine.wait_s:
                return False
            self._given_up[job.job_id] = silent
            print(
                f"runner: gave up on container {job.job_id}: no engine and no heartbeat for "
                f"{silent:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            return True
        state = job.watcher.get_state(job.job_id, mode="force")
        started = self._started.get(job.job_id)
        if (
            state == "RUNNING"
            and started is not None
            and time.time() - started > self.options.timeout_min * 60
        ):
            with contextlib.suppress(*UNREACHABLE):
                client().api.kill(job.job_id)  # over its limit: ends as KILLED, recorded lost
        return state.upper() not in INCOMPLETE

    def end_reason(self, job: submitit.Job[Any]) -> str:
        if job.job_id in self._given_up:
            return (
                f"lost: the Docker engine did not answer and the cell gave no heartbeat for "
                f"{self._given_up[job.job_id]:.0f} s (engine_wait_s); container {job.job_id} "
                "is presumed gone with it"
            )
        info = job.watcher.get_info(job.job_id, mode="cache")
        state, code = info.get("State", "UNKNOWN"), info.get("ExitCode", "?")
        why = {
            "KILLED": "was killed",
            "OUT_OF_MEMORY": "was killed for memory (OOMKilled)",
            "NOT_FOUND": "is gone",
        }.get(state, "ended")
        if job.job_id in self.engine.seen_down and state in ("KILLED", "NOT_FOUND"):
            why = "went away with the Docker daemon (it stopped or restarted meanwhile)"
        tail = ""
        with contextlib.suppress(Exception):
            tail = (job.stderr() or "")[-800:]
        # The kernel killed it at its memory limit: host memory, which on_oom can remedy.
        kind = "oom: host" if state == "OUT_OF_MEMORY" else "lost"
        return f"{kind}: container {job.job_id} {why} (exit {code}, {state})" + (
            f"; stderr tail: {tail}" if tail else ""
        )

    def cancel(self, job_ids: list[str]) -> list[str]:
        """Interrupt these cells' containers (SIGINT, see DockerJob.cancel)."""
        return self._signal(job_ids, "SIGINT")

    def alive(self, job_ids: list[str]) -> list[str]:
        """Containers of ours that still run; all of them while the engine can't answer."""
        try:
            api = client().api
        except UNREACHABLE:
            return list(job_ids)
        running = []
        for job_id in job_ids:
            try:
                if api.inspect_container(job_id)["State"]["Running"]:
                    running.append(job_id)
            except docker.errors.NotFound:
                continue
            except UNREACHABLE:
                running.append(job_id)
        return running

    def kill(self, job_ids: list[str]) -> None:
        self._signal(job_ids, "SIGKILL")

    def _signal(self, job_ids: list[str], sig: str) -> list[str]:
        """Send ``sig`` to these containers; only containers that this backend started
        (label), never another of the engine's. Returns those it reached."""
        reached: list[str] = []
        try:
            api = client().api
        except UNREACHABLE:  # no engine: cancel.json is written; nothing to signal now
            return reached
        for job_id in job_ids:
            try:
                attrs = api.inspect_container(job_id)
                if attrs["Config"]["Labels"].get(LABEL) != "docker":
                    continue
                api.kill(job_id, signal=sig)
            except UNREACHABLE:  # unknown, not running any more, or no engine
                continue
            reached.append(job_id)
        return reached

    def release(self, job: submitit.Job[Any]) -> None:
        """Give the GPU back; remove the ended container (its logs are in the submitit
        folder already) and the id file it read."""
        self.pool.release(job.job_id)
        self._started.pop(job.job_id, None)
        self._attempts.pop(job.job_id, None)
        if not self.options.keep_containers:
            # v=True: anonymous volumes (an image's VOLUME) go with it. No engine (given
            # up): the next sweep or resume of this matrix removes it (_remove_leftovers).
            with contextlib.suppress(*UNREACHABLE):
                client().api.remove_container(job.job_id, v=True, force=True)
        for f in Path(self.folder).glob(".docker_id_*"):
            with contextlib.suppress(OSError):
                if f.read_text().strip() == job.job_id:
                    f.unlink()
