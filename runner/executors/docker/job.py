"""The payload of a docker cell: a :class:`~runner.job.cell.CellJob` that knows it runs in a
container.

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

Both are its entries in the signal policy (:mod:`runner.job.signals`). A DDP cell's ranks
all get the signal (:mod:`runner.executors.docker.ranks` forwards both); a rank that is
training asks the recipe to stop, so that the ranks stop together at their next step
(:meth:`runner.job.cell.CellJob.on_signal`).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from runner.job import signals
from runner.job.cell import CellJob
from runner.job.signals import Meaning
from runner.ledger import CellRecord

STOPPED = (
    "lost: the container was stopped from outside the runner (SIGTERM: `docker stop`, or "
    "the Docker daemon stopping or restarting)"
)


@dataclass
class DockerCellJob(CellJob):
    """A cell run in a container (see the module's docstring)."""

    docker_image: str = ""
    docker_image_id: str = ""

    signal_meanings: ClassVar[Mapping[int, Meaning]] = signals.DOCKER
    lost_reason: ClassVar[str] = STOPPED

    def host_name(self) -> str:
        # Its pids are the container's, not the host's, even under the host's hostname
        # (network: host): the ledger must never look them up among the host's processes.
        return f"{socket.gethostname()} (container)"

    def _ensure_run(self, record: CellRecord, code: dict[str, Any] | None = None) -> str:
        run_id = super()._ensure_run(record, code)
        try:  # best effort: docker.json in the ledger has it for sure
            from runner import tracking

            c = tracking.client(self.tracking_uri)
            c.set_tag(run_id, "runner.docker_image", self.docker_image)
            c.set_tag(run_id, "runner.docker_image_id", self.docker_image_id)
        except Exception as exc:
            print(f"could not tag the MLflow run with its image: {exc}", file=sys.stderr)
        return run_id
