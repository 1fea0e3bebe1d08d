"""The submitit side of the docker executor: a container per job, its state from the engine.

* :class:`DockerExecutor` is a submitit ``PicklingExecutor``: the payload is pickled into the
  submitit folder as for SLURM, and ``_submit_command`` creates a container that runs
  ``python -u -m submitit.core._submit <folder>`` on it. The job id is the container's short
  id, so logs (``<id>_0_log.out/err``), results and states read as for any submitit job.
  A DDP cell (``ranks`` > 1) runs :mod:`runner.executors.docker.ranks` instead, which starts
  the job's N ranks in the container (rank k logs to ``<id>_k_log.out/err``).
* :class:`DockerJob` takes its state from the container (:class:`DockerInfoWatcher`).

Kept apart from :mod:`runner.executors.docker.backend` (the backend: GPUs, mounts, the engine going
away) so that each reads on its own.
"""

from __future__ import annotations

import contextlib
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from submitit.core import core

RANKS = "runner.executors.docker.ranks"  # the command of a DDP cell's container
LABEL = "runner.backend"  # every container this backend starts carries LABEL=docker
INCOMPLETE = ("PENDING", "RUNNING", "COMPLETING", "UNKNOWN")
# What the SDK raises when the engine does not answer: DockerException from client() (the
# API version is negotiated on connect), requests' ConnectionError from a call on a client
# whose socket went away (docker-py does not wrap it).
UNREACHABLE = (docker.errors.DockerException, requests.exceptions.RequestException)

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


def state_of(attrs: dict[str, Any]) -> dict[str, str]:
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
        try:
            api = client().api
            for job_id in self._registered - self._finished:
                try:
                    self._info_dict[job_id] = state_of(api.inspect_container(job_id))
                except docker.errors.NotFound:  # removed: it ended, and we saw nothing of it
                    self._info_dict[job_id] = {"State": "NOT_FOUND", "ExitCode": "", "Error": ""}
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)
        except UNREACHABLE:
            pass  # engine busy or down: keep the last known states (the backend decides)
        self._last_status_check = time.time()

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"


class DockerJob(core.Job[core.R]):
    watcher = DockerInfoWatcher(delay_s=5)

    def cancel(self, check: bool = True) -> None:
        # SIGINT: the cell records itself as cancelled (KeyboardInterrupt), as in local runs.
        with contextlib.suppress(*UNREACHABLE):
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
        self.ranks = 1  # DDP ranks of the next job (gpus_per_cell): >1 runs them through ranks
        self._throttling = 0.0  # the engine is local; submitit's 0.2 s pause buys nothing

    def _submit_command(self, command: str) -> core.Job[Any]:
        folder = Path(self.folder).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / f".docker_id_{uuid.uuid4().hex}"
        argv = ["/bin/sh", "-c", _ENTRY, str(folder), str(id_file)]
        if self.ranks > 1:  # N processes of the job in one container (DDP)
            argv += [*self.python, "-u", "-m", RANKS, str(folder), str(self.ranks)]
        else:
            argv += [*self.python, "-u", "-m", "submitit.core._submit", str(folder)]
        container = client().containers.create(command=argv, detach=True, **self.container)
        job_id = container.short_id
        id_file.write_text(job_id)
        job: DockerJob[Any] = DockerJob(folder=folder, job_id=job_id)
        if self.start:
            try:
                container.start()
            except docker.errors.APIError:
                container.remove(force=True, v=True)
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
