"""Cells in Docker containers on this machine, one GPU (or CPU slot) each, through submitit.

* :class:`DockerExecutor` is a submitit ``PicklingExecutor``: the payload is pickled into the
  submitit folder as for SLURM, and ``_submit_command`` creates a container that runs
  ``python -u -m submitit.core._submit <folder>`` on it. The job id is the container's short
  id, so logs (``<id>_0_log.out/err``), results and states read as for any submitit job.
* :class:`DockerJob` takes its state from the container (:class:`DockerInfoWatcher`).
* :class:`DockerBackend` keeps ``slots`` = GPUs × cells_per_gpu (or ``cpu_slots``) cells in
  flight and gives each new container one free GPU through a ``DeviceRequest``.
* Paths keep their meaning: the sweep dir, the working directory and a file/sqlite MLflow
  store are mounted read-write at their own host paths, data (``mounts``) read-only.
* The image tag and id go into ``attempts/NNNN/docker.json`` (written by the submitter) and
  onto the MLflow run as ``runner.docker_image`` / ``runner.docker_image_id`` (by the job).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors
import submitit
from docker.types import DeviceRequest
from submitit.core import core

from runner.executors.base import Backend
from runner.executors.docker_gpus import GpuPool
from runner.executors.docker_options import DockerExecutorOptions
from runner.job import CellJob
from runner.ledger import CellRecord

__all__ = ["DockerBackend", "DockerCellJob", "DockerExecutorOptions", "DockerJob"]

LABEL = "runner.backend"  # every container this backend starts carries LABEL=docker
DOCKER_FILE = "docker"  # attempts/NNNN/docker.json, written only by the submitter
INCOMPLETE = ("PENDING", "RUNNING", "COMPLETING", "UNKNOWN")

# Reads the job id (written after `create`, before `start`: a container cannot know its own
# id in its environment) and sends the job's output where submitit's Job looks for it.
# $0 = submitit folder, $1 = id file, then the Python command.
_ENTRY = (
    'id=$(cat "$1") && export SUBMITIT_LOCAL_JOB_ID="$id" && shift && '
    'exec "$@" >>"$0/${id}_0_log.out" 2>>"$0/${id}_0_log.err"'
)


def client() -> docker.DockerClient:
    # DOCKER_HOST selects the engine; the API version is negotiated (1.41 on Debian 12).
    return docker.from_env()


def _state_of(attrs: dict[str, Any]) -> dict[str, str]:
    """A container's state in SLURM's words, which submitit's ``is_done`` understands."""
    st = attrs.get("State", {})
    status, code = st.get("Status", ""), int(st.get("ExitCode") or 0)
    if status == "created":
        state = "PENDING"
    elif status in ("running", "restarting", "paused"):
        state = "RUNNING"
    elif status == "removing":
        state = "COMPLETING"
    elif st.get("OOMKilled"):
        state = "OUT_OF_MEMORY"
    elif code == 0:
        state = "COMPLETED"
    elif code in (137, 143):  # SIGKILL/SIGTERM from outside (docker kill/stop, the kernel)
        state = "KILLED"
    else:
        state = "FAILED"
    return {"State": state, "ExitCode": str(code), "Error": st.get("Error") or ""}


class DockerInfoWatcher(core.InfoWatcher):
    """Asks the engine about every registered, unfinished container (one inspect each)."""

    def _make_command(self) -> list[str] | None:
        return None  # the SDK is asked instead of a command line (see update)

    def update(self) -> None:
        self._num_calls += 1
        api = client().api
        for job_id in self._registered - self._finished:
            try:
                self._info_dict[job_id] = _state_of(api.inspect_container(job_id))
            except docker.errors.NotFound:  # removed: it ended, and we saw nothing of it
                self._info_dict[job_id] = {"State": "NOT_FOUND", "ExitCode": "", "Error": ""}
            except docker.errors.DockerException:
                continue  # engine busy or down: keep the last known state
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)
        self._last_status_check = time.time()

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"


class DockerJob(core.Job[core.R]):
    watcher = DockerInfoWatcher(delay_s=5)

    def cancel(self, check: bool = True) -> None:
        # SIGINT: the cell records itself as cancelled (KeyboardInterrupt), as in local runs.
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client().api.kill(self.job_id, signal="SIGINT")


class DockerExecutor(core.PicklingExecutor):
    """Pickles the payload like any submitit executor; ``_submit_command`` runs a container.

    ``container`` holds the keyword arguments of the next ``containers.create`` (image,
    mounts, device requests, labels): the backend sets it before each ``submit``.
    """

    job_class = DockerJob

    def __init__(self, folder: Path, python: str, start: bool = True) -> None:
        super().__init__(folder, max_num_timeout=0)
        self.python = shlex.split(python)
        self.start = start  # False: create only (tests that inspect the request)
        self.container: dict[str, Any] = {}
        self._throttling = 0.0  # the engine is local; submitit's 0.2 s pause buys nothing

    def _submit_command(self, command: str) -> core.Job[Any]:
        folder = Path(self.folder).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / f".docker_id_{uuid.uuid4().hex}"
        argv = ["/bin/sh", "-c", _ENTRY, str(folder), str(id_file)]
        argv += [*self.python, "-u", "-m", "submitit.core._submit", str(folder)]
        container = client().containers.create(command=argv, detach=True, **self.container)
        job_id = container.short_id
        id_file.write_text(job_id)
        job: DockerJob[Any] = DockerJob(folder=folder, job_id=job_id)
        if self.start:
            try:
                container.start()
            except docker.errors.APIError:
                container.remove(force=True)
                raise
        return job

    def _num_tasks(self) -> int:
        return 1

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        raise NotImplementedError("containers are created through the SDK, not a script")

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        raise NotImplementedError("containers are created through the SDK, not a command")

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        raise NotImplementedError("the job id is the container's id")


class DockerCellJob(CellJob):
    """A cell that also tags its MLflow run with the image it ran in."""

    docker_image: str = ""
    docker_image_id: str = ""

    def _ensure_run(self, record: CellRecord) -> str:
        run_id = super()._ensure_run(record)
        try:  # best effort: docker.json in the ledger has it for sure
            from runner import track

            c = track.client(self.tracking_uri)
            c.set_tag(run_id, "runner.docker_image", self.docker_image)
            c.set_tag(run_id, "runner.docker_image_id", self.docker_image_id)
        except Exception as exc:
            print(f"could not tag the MLflow run with its image: {exc}", file=sys.stderr)
        return run_id


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
    waits = True  # the runner keeps the queue: containers start as GPUs free up

    def __init__(self, options: DockerExecutorOptions, folder: Path, start: bool = True) -> None:
        super().__init__(options, folder)
        self.options: DockerExecutorOptions = options
        gpus = options.gpus
        if gpus == "all":
            from runner.executors.local import visible_gpus

            gpus = visible_gpus()
        self.pool = GpuPool(list(gpus), options.cells_per_gpu)
        self.executor = DockerExecutor(folder, options.python, start=start)
        cores = os.cpu_count() or 1
        self.threads = options.threads_per_cell or max(1, cores // self.slots)
        self._image: tuple[str, str] | None = None
        self._started: dict[str, float] = {}

    @property
    def slots(self) -> int:
        return self.pool.size or self.options.cpu_slots

    def image(self) -> tuple[str, str]:
        """(tag, image id) of the configured image, looked up once; a clear error if absent."""
        if self._image is None:
            name = self.options.image
            try:
                img = client().images.get(name)
            except docker.errors.ImageNotFound:
                raise RuntimeError(
                    f"executor 'docker': image {name!r} is not on this Docker engine; build "
                    "it with `make image` (see containers/README.md)"
                ) from None
            except docker.errors.DockerException as exc:
                raise RuntimeError(f"executor 'docker': no Docker engine answers: {exc}") from exc
            self._image = (name, str(img.id))
        return self._image

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

    def _environment(self) -> dict[str, str]:
        env = {n: os.environ[n] for n in self.options.env if n in os.environ}
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
        tag, image_id = self.image()
        out: list[submitit.Job[Any]] = []
        for job in jobs:
            if _is_server(job.tracking_uri) and self._network(job.tracking_uri) == "none":
                raise RuntimeError(
                    f"executor 'docker': network 'none' cannot reach {job.tracking_uri}; "
                    "use network: host (or bridge with a reachable address)"
                )
            cell = DockerCellJob(**{f.name: getattr(job, f.name) for f in dataclasses.fields(job)})
            cell.docker_image, cell.docker_image_id = tag, image_id
            gpu = self.pool.take() if self.pool.gpus else None
            labels = {
                LABEL: "docker",
                "runner.matrix": job.matrix,
                "runner.cell": job.cell_id,
                "runner.attempt": str(job.attempt),
            }
            params: dict[str, Any] = {
                "image": tag,
                "labels": labels | ({"runner.gpu": str(gpu)} if gpu is not None else {}),
                "environment": self._environment(),
                "volumes": self._volumes(job),
                "working_dir": job.workdir,
                "user": self.options.resolved_user(),
                "network_mode": self._network(job.tracking_uri),
                "shm_size": self.options.shm_size,
                "mem_limit": self.options.mem_limit,
                # `docker stop` then interrupts the cell (recorded cancelled), not SIGTERM,
                # which submitit's handler ignores until the SIGKILL 10 s later.
                "stop_signal": "SIGINT",
                "init": True,  # reaps DataLoader workers; forwards signals to the cell
            }
            if gpu is not None:
                params["device_requests"] = [
                    DeviceRequest(device_ids=[str(gpu)], capabilities=[["gpu"]])
                ]
            self.executor.container = {k: v for k, v in params.items() if v is not None}
            try:
                sj = self.executor.submit(cell)
            except BaseException:
                if gpu is not None:
                    self.pool.give_back(gpu)
                raise
            if gpu is not None:
                self.pool.hold(sj.job_id, gpu)
            self._started[sj.job_id] = time.time()
            info = {"container_id": sj.job_id, "image": tag, "image_id": image_id, "gpu": gpu}
            info |= {"network": params["network_mode"], "user": params["user"]}
            CellRecord(Path(job.cells_dir), job.cell_id).attempt(job.attempt).write(
                DOCKER_FILE, {**info, "time": time.time()}
            )
            out.append(sj)
        return out

    def finished(self, job: submitit.Job[Any]) -> bool:
        state = job.watcher.get_state(job.job_id, mode="force")
        started = self._started.get(job.job_id)
        if (
            state == "RUNNING"
            and started is not None
            and time.time() - started > self.options.timeout_min * 60
        ):
            with contextlib.suppress(docker.errors.DockerException):
                client().api.kill(job.job_id)  # over its limit: ends as KILLED, recorded lost
        return state.upper() not in INCOMPLETE

    def end_reason(self, job: submitit.Job[Any]) -> str:
        info = job.watcher.get_info(job.job_id, mode="cache")
        state, code = info.get("State", "UNKNOWN"), info.get("ExitCode", "?")
        why = {
            "KILLED": "was killed",
            "OUT_OF_MEMORY": "was killed for memory (OOMKilled)",
            "NOT_FOUND": "is gone",
        }.get(state, "ended")
        tail = ""
        with contextlib.suppress(Exception):
            tail = (job.stderr() or "")[-800:]
        return f"lost: container {job.job_id} {why} (exit {code}, {state})" + (
            f"; stderr tail: {tail}" if tail else ""
        )

    def cancel(self, job_ids: list[str]) -> list[str]:
        """Interrupt these cells' containers (SIGINT, see DockerJob.cancel); only containers
        that this backend started (label), never another of the engine's."""
        stopped = []
        api = client().api
        for job_id in job_ids:
            try:
                attrs = api.inspect_container(job_id)
                if attrs["Config"]["Labels"].get(LABEL) != "docker":
                    continue
                api.kill(job_id, signal="SIGINT")
            except docker.errors.DockerException:  # unknown, or not running any more
                continue
            stopped.append(job_id)
        return stopped

    def release(self, job: submitit.Job[Any]) -> None:
        """Give the GPU back; remove the ended container (its logs are in the submitit
        folder already) and the id file it read."""
        self.pool.release(job.job_id)
        self._started.pop(job.job_id, None)
        if not self.options.keep_containers:
            with contextlib.suppress(docker.errors.NotFound):
                client().api.remove_container(job.job_id, v=True, force=True)
        for f in Path(self.folder).glob(".docker_id_*"):
            with contextlib.suppress(OSError):
                if f.read_text().strip() == job.job_id:
                    f.unlink()
