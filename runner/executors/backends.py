"""The backend of each executor kind (imported plainly, as submitit's ``core/plugins.py``
does with its own executors; third-party kinds through the ``runner.executor_backends``
entry-point group)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from runner.executors.base import Backend
from runner.executors.debug.backend import DebugBackend
from runner.executors.docker.backend import DockerBackend
from runner.executors.local.backend import LocalBackend
from runner.executors.slurm.backend import SlurmBackend

PLUGIN_GROUP = "runner.executor_backends"

BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "debug": DebugBackend,
    "slurm": SlurmBackend,
    "docker": DockerBackend,
    **{ep.name: ep.load() for ep in entry_points(group=PLUGIN_GROUP)},
}


def backend_class(kind: str) -> type[Backend]:
    return BACKENDS[kind]


def make_backend(options: Any, folder: Path) -> Backend:
    """The backend for a matrix's ``executor`` options."""
    if options.kind not in BACKENDS:
        raise ValueError(f"no backend for executor kind {options.kind!r}")
    return BACKENDS[options.kind](options, folder)
