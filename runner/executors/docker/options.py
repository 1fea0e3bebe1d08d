"""The ``executor: {kind: docker, ...}`` block of a matrix file.

Kept apart from :mod:`runner.executors.docker.backend` and free of docker/submitit imports, because
:mod:`runner.matrix` loads it to validate every matrix, docker or not.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationInfo,
    field_validator,
)

from runner.executors.resources import visible_gpus

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^[0-9]+[bkmgBKMG]?$")


class DockerMount(BaseModel):
    """A host path bind-mounted into every cell's container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="absolute host path")
    target: str | None = Field(
        None,
        description="path in the container; None = the same as source (so that the "
        "absolute paths in the matrix, e.g. data.root, hold inside too)",
    )
    read_only: bool = Field(True, description="data is mounted read-only unless said otherwise")

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("expected an absolute path")
        return value


class DockerExecutorOptions(BaseModel):
    """Cells run in Docker containers on this machine, one GPU (or CPU slot) each, or
    ``gpus_per_cell`` GPUs and as many processes for a DDP cell.

    The sweep directory (ledger, logs, checkpoints), the working directory and a file/sqlite
    MLflow store are mounted read-write at their own paths; everything else comes from
    ``mounts``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["docker"]
    image: str = Field(
        "runner-trainer:latest", description="image with Python, the project and its deps"
    )
    gpus: list[NonNegativeInt] | Literal["all"] = Field(
        "all",
        description="GPU ids handed out to cells; 'all' = every GPU nvidia-smi lists here; "
        "[] (or no GPU found) = CPU-only cells, cpu_slots at a time",
    )
    cells_per_gpu: PositiveInt = Field(1, description="cells sharing one GPU at once")
    cpu_slots: PositiveInt = Field(1, description="cells at once when there is no GPU")
    mounts: list[DockerMount] = Field(
        default_factory=list, description="extra bind mounts (data, the code), read-only default"
    )
    env: list[str] = Field(
        default_factory=list,
        description="names of host environment variables passed into the containers (an "
        "allow-list: nothing else of the host's environment goes in)",
    )
    shm_size: str = Field("2g", description="/dev/shm size (DataLoader workers share it)")
    network: Literal["auto", "none", "host", "bridge"] = Field(
        "auto",
        description="container network; 'auto' = none for a file/sqlite store, host when the "
        "tracking URI is a server (127.0.0.1 is the host's only with 'host')",
    )
    user: str | None = Field(
        None,
        description="uid:gid in the container; None = the invoking user's (files in the "
        "sweep dir stay theirs)",
    )
    python: str = Field("python", description="command that runs Python inside the image")
    threads_per_cell: PositiveInt | None = Field(
        None, description="torch/OpenMP threads per cell; None = cores // slots"
    )
    mem_limit: str | None = Field(None, description="memory limit per container, e.g. '16g'")
    timeout_min: PositiveInt = Field(7 * 24 * 60, description="wall-clock limit per cell")
    engine_wait_s: PositiveInt = Field(
        300,
        description="how long the sweep waits for a Docker engine that stopped answering (a "
        "dockerd restart) before it gives up a cell that gives no heartbeat either",
    )
    keep_containers: bool = Field(
        False, description="keep ended containers for `docker inspect` (default: removed)"
    )
    gpus_per_cell: PositiveInt = Field(
        1,
        description="processes (DDP ranks) per cell, in one container that gets that many "
        "GPUs; without GPUs, that many CPU processes with gloo",
    )

    @field_validator("gpus_per_cell")
    @classmethod
    def _enough_gpus(cls, value: int, info: ValidationInfo) -> int:
        gpus = info.data.get("gpus")
        listed = len(set(gpus)) if isinstance(gpus, list) else 0
        if listed and value > listed:
            raise ValueError(
                f"gpus_per_cell={value} but gpus lists {listed} GPU(s) ({gpus}): list at "
                f"least {value}, or lower gpus_per_cell"
            )
        return value

    @field_validator("env")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not _ENV_NAME.match(n)]
        if bad:
            raise ValueError(f"expected environment variable names; not names: {', '.join(bad)}")
        return names

    @field_validator("shm_size", "mem_limit")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and not _SIZE.match(value):
            raise ValueError("expected a size like '2g' or '512m'")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$", value):
            raise ValueError("expected 'uid:gid' or a user name")
        return value

    def resolved_user(self) -> str:
        return self.user or f"{os.getuid()}:{os.getgid()}"

    def cell_gpus(self, here: list[int] | None = None) -> int:
        """GPUs each cell holds: one per rank when the pool (``gpus``; "all": this machine's,
        ``here``, asked of nvidia-smi when None) has any."""
        pool = (visible_gpus() if here is None else here) if self.gpus == "all" else self.gpus
        return self.gpus_per_cell if pool else 0
