"""Executor backends, one module each, behind :class:`runner.executors.base.Backend`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # runner.matrix imports this package (slurm_options): keep submitit out
    from runner.executors.base import Backend


def make_backend(options: Any, folder: Path) -> Backend:
    """The backend for a matrix's ``executor`` options (imported lazily: each has its deps)."""
    if options.kind == "local":
        from runner.executors.local import LocalBackend

        return LocalBackend(options, folder)
    if options.kind == "debug":
        from runner.executors.debug import DebugBackend

        return DebugBackend(options, folder)
    if options.kind == "slurm":
        from runner.executors.slurm import SlurmBackend

        return SlurmBackend(options, folder)
    if options.kind == "docker":
        from runner.executors.docker import DockerBackend

        return DockerBackend(options, folder)
    raise ValueError(f"no backend for executor kind {options.kind!r}")
