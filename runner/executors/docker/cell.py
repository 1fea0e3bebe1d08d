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
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

from runner.job import CellJob, CellLost
from runner.ledger import CellRecord

STOPPED = (
    "lost: the container was stopped from outside the runner (SIGTERM: `docker stop`, or "
    "the Docker daemon stopping or restarting)"
)


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise CellLost(STOPPED)


class DockerCellJob(CellJob):
    """A cell run in a container (see the module's docstring)."""

    docker_image: str = ""
    docker_image_id: str = ""

    def __call__(self) -> dict[str, Any]:
        if threading.current_thread() is not threading.main_thread():
            return super().__call__()  # signal handlers can only be set on the main thread
        previous = signal.signal(signal.SIGTERM, _stopped)
        try:
            return super().__call__()
        finally:
            signal.signal(signal.SIGTERM, previous)

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
