"""The ``executor: {kind: local, ...}`` block of a matrix file (pydantic only: the matrix
schema imports it to validate every matrix, and that costs no backend)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from runner.executors.resources import visible_gpus


class LocalExecutorOptions(BaseModel):
    """Cells run as local processes through submitit's LocalExecutor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local"] = "local"
    slots: PositiveInt = Field(1, description="cells running at once")
    gpus: list[int] | None = Field(
        None, description="GPU ids handed out one per running cell; None = all visible GPUs"
    )
    threads_per_cell: PositiveInt | None = Field(
        None, description="torch/OpenMP threads per cell; None = cores // slots"
    )
    timeout_min: PositiveInt = Field(7 * 24 * 60, description="wall-clock limit per cell")
    gpus_per_cell: PositiveInt = Field(
        1,
        description="processes (DDP ranks) per cell, one GPU each; on a machine without "
        "GPUs, that many CPU processes with gloo",
    )
    standby: bool = Field(
        False,
        description="keep one cell more than slots started, its imports done, waiting for "
        "the next free slot (its start-up then overlaps the running cells); one-GPU cells. "
        "Off by default: measured, it shortens a cell's start but not a sweep on busy cores",
    )

    @model_validator(mode="after")
    def _enough_gpus(self) -> LocalExecutorOptions:
        if self.gpus is not None and self.gpus and self.gpus_per_cell > len(set(self.gpus)):
            raise ValueError(
                f"gpus_per_cell={self.gpus_per_cell} but gpus lists {len(set(self.gpus))} "
                f"GPU(s) ({self.gpus}): list at least {self.gpus_per_cell}, or lower "
                "gpus_per_cell"
            )
        return self

    def cell_gpus(self, here: list[int] | None = None) -> int:
        """GPUs each cell holds: one per rank when ``gpus`` (or, unset, this machine: ``here``,
        asked of nvidia-smi when None) has any."""
        gpus = self.gpus if self.gpus is not None else (visible_gpus() if here is None else here)
        return self.gpus_per_cell if gpus else 0
