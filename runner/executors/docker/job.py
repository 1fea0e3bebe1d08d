"""The payload of a docker cell: a :class:`~runner.job.CellJob` that knows it is in a container.

Two differences from a local cell, both decided inside the container:

* its MLflow run is tagged with the image it ran in (``runner.docker_image``, the tag, and
  ``runner.docker_image_id``, the image's content digest ``sha256:...``);
* SIGTERM means the container is being stopped from outside the runner: ``docker stop``, or
  the Docker daemon stopping its containers as it shuts down or restarts (without
  live-restore it stops every running container, with the container's stop signal, which is
  Docker's default SIGTERM here). The cell then records itself failed as *lost* (resumable,
  ``runner resume --only lost``) and closes its MLflow run, instead of being SIGKILLed 10 s
  later in silence (submitit ignores SIGTERM, waiting for SLURM's kill). ``runner cancel``
  sends SIGINT instead, which the cell records as cancelled.

A DDP cell's ranks all get the signal (:mod:`runner.executors.docker.ranks` forwards both).
A rank that raised at once could leave its peer blocked in a collective waiting for it (a
peer already in the step's all-reduce) until the container is killed, with no outcome
recorded; so a rank that is training asks the recipe to stop instead: the ranks agree on it
at the next step (the stop flag is all-reduced each step), rank 0 writes that step's
checkpoint, and then records the cell cancelled (SIGINT) or lost (SIGTERM) as above
(:meth:`DockerCellJob.on_interrupted`). Outside training (setup, data caching) the signal
acts at once, as for one process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from recipes.contract import TrainResult
from runner.job import CellJob, CellLost
from runner.ledger import CellRecord

STOPPED = (
    "lost: the container was stopped from outside the runner (SIGTERM: `docker stop`, or "
    "the Docker daemon stopping or restarting)"
)


class DockerCellJob(CellJob):
    """A cell run in a container (see the module's docstring)."""

    docker_image: str = ""
    docker_image_id: str = ""

    def __call__(self) -> dict[str, Any]:
        if threading.current_thread() is not threading.main_thread():
            return super().__call__()  # signal handlers can only be set on the main thread
        self._signalled: int | None = None
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            return super().__call__()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self) -> dict[str, Any]:
        # Inside CellJob.__call__'s own SIGINT handler (KeyboardInterrupt), which it keeps
        # for one process: ours raises the same there.
        if threading.current_thread() is not threading.main_thread():
            return super()._run()
        previous = signal.signal(signal.SIGINT, self._on_signal)
        try:
            return super()._run()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = signum
        why = "cancelled" if signum == signal.SIGINT else STOPPED
        # WORLD_SIZE: exported for a DDP rank (runner.job.distributed_env) before it trains.
        if int(os.environ.get("WORLD_SIZE") or 1) > 1 and self.request_stop(why):
            return  # the ranks stop together at their next step
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise CellLost(STOPPED)

    def on_interrupted(self, result: TrainResult) -> None:
        """Only a signal asks a docker cell's recipe to stop, on this rank or another (each
        gets it): SIGINT is `runner cancel`'s, SIGTERM `docker stop`'s."""
        cancelled = CellRecord(Path(self.cells_dir), self.cell_id).attempt(self.attempt)
        if getattr(self, "_signalled", None) == signal.SIGINT or cancelled.read("cancel"):
            raise KeyboardInterrupt("cancelled: runner cancel")
        raise CellLost(STOPPED)

    def host_name(self) -> str:
        # Its pids are the container's, not the host's, even under the host's hostname
        # (network: host): the ledger must never look them up among the host's processes.
        return f"{socket.gethostname()} (container)"

    def _ensure_run(self, record: CellRecord) -> str:
        run_id = super()._ensure_run(record)
        try:  # best effort: docker.json in the ledger has it for sure
            from runner import tracking

            c = tracking.client(self.tracking_uri)
            c.set_tag(run_id, "runner.docker_image", self.docker_image)
            c.set_tag(run_id, "runner.docker_image_id", self.docker_image_id)
        except Exception as exc:
            print(f"could not tag the MLflow run with its image: {exc}", file=sys.stderr)
        return run_id
