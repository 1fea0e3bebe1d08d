"""What each executor kind accepts: its options model, by kind (pydantic only, no backend).

The matrix schema validates a matrix's ``executor`` block with these, so planning any matrix
imports no submitit and no Docker SDK. Each model also says what a cell holds
(``cell_gpus``), which is all the report needs to know of an executor.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Protocol

from pydantic import BaseModel

from runner.executors.debug.options import DebugExecutorOptions
from runner.executors.docker.options import DockerExecutorOptions
from runner.executors.local.options import LocalExecutorOptions
from runner.executors.slurm.options import SlurmExecutorOptions

#: Entry-point group of third-party options models: ``kind = "module:OptionsModel"``.
PLUGIN_GROUP = "runner.executor_options"


class ExecutorOptions(Protocol):
    """What every options model has besides its fields."""

    kind: str

    def cell_gpus(self, here: list[int] | None = None) -> int:
        """GPUs each cell holds (``here``: this machine's GPUs, asked when None)."""
        ...


def _plugins() -> dict[str, type[BaseModel]]:
    return {ep.name: ep.load() for ep in entry_points(group=PLUGIN_GROUP)}


OPTIONS: dict[str, type[BaseModel]] = {
    "local": LocalExecutorOptions,
    "debug": DebugExecutorOptions,
    "slurm": SlurmExecutorOptions,
    "docker": DockerExecutorOptions,
    **_plugins(),
}


def options_model(kind: str) -> type[BaseModel]:
    return OPTIONS[kind]


def default_options(kind: str) -> Any:
    """The options of ``kind`` with nothing set but the kind (ValidationError when the kind
    needs more: docker needs an image)."""
    return OPTIONS[kind].model_validate({"kind": kind})
