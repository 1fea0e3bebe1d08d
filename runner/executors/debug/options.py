"""The ``executor: {kind: debug}`` block of a matrix file (pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from runner.executors.resources import visible_gpus


class DebugExecutorOptions(BaseModel):
    """Cells run one after another inside the runner process (breakpoints work)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["debug"]

    def cell_gpus(self, here: list[int] | None = None) -> int:
        """The cell trains on cuda:0 when this machine has a GPU (``here``: its GPUs)."""
        return 1 if (visible_gpus() if here is None else here) else 0
