"""Executor backends, one module (or package) each, behind :class:`~runner.executors.base.Backend`.

``KINDS`` is the only registry: a matrix's ``executor.kind`` names an entry, whose options
model validates the ``executor`` block (pydantic, at plan time) and whose backend runs the
cells. A new kind is one module with an options model and a backend, plus one line here.
Entries are import paths, imported when a matrix names the kind.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pydantic import BaseModel

    from runner.executors.base import Backend


class Kind(NamedTuple):
    options: str  # "module:OptionsModel" (validates the matrix's executor block at plan time)
    backend: str  # "module:BackendClass"


KINDS: dict[str, Kind] = {  # kind: (options model, backend), under runner.executors
    "local": Kind("local:LocalExecutorOptions", "local:LocalBackend"),
    "debug": Kind("debug:DebugExecutorOptions", "debug:DebugBackend"),
    "slurm": Kind("slurm.options:SlurmExecutorOptions", "slurm.backend:SlurmBackend"),
    "docker": Kind("docker.options:DockerExecutorOptions", "docker.backend:DockerBackend"),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def options_model(kind: str) -> type[BaseModel]:
    return _load(KINDS[kind].options)


def backend_class(kind: str) -> type[Backend]:
    return _load(KINDS[kind].backend)


def make_backend(options: Any, folder: Path) -> Backend:
    """The backend for a matrix's ``executor`` options."""
    if options.kind not in KINDS:
        raise ValueError(f"no backend for executor kind {options.kind!r}")
    return _load(KINDS[options.kind].backend)(options, folder)
