"""The ``executor: {kind: slurm, ...}`` block of a matrix file.

Kept apart from :mod:`runner.executors.slurm.backend` and free of submitit imports, because
:mod:`runner.matrix` loads it to validate every matrix, SLURM or not.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)


class SlurmExecutorOptions(BaseModel):
    """Cells run as SLURM job arrays through submitit, and requeue themselves on time-out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slurm"]
    partition: str | None = Field(None, description="partition (-p); None = the cluster default")
    account: str | None = Field(None, description="account to charge (-A)")
    qos: str | None = Field(None, description="quality of service (--qos)")
    time_min: PositiveInt = Field(
        24 * 60,
        description="time limit per job in minutes; a cell that hits it is requeued and "
        "resumes from its checkpoint (see max_requeues)",
    )
    gpus_per_task: NonNegativeInt = Field(
        1,
        description="GPUs per task, i.e. per rank of the cell (--gpus-per-task): 1, or 0 for "
        "CPU-only cells; a DDP cell of gpus_per_cell ranks holds gpus_per_cell GPUs",
    )
    gpus_per_cell: PositiveInt = Field(
        1,
        description="GPUs per cell, one per DDP rank: the cell runs as this many tasks on one "
        "node (--ntasks-per-node), as on the local and docker executors; with gpus_per_task "
        "0 the ranks train on CPUs with gloo",
    )
    gres: str | None = Field(
        None,
        description="generic resources per cell (one node) instead of gpus_per_task, e.g. "
        "'gpu:a100:1' (--gres)",
    )
    cpus_per_task: PositiveInt = Field(4, description="CPU cores per cell (data loading)")
    mem_gb: PositiveFloat | None = Field(
        None, description="memory per cell in GB (--mem); None = the cluster default"
    )
    constraint: str | None = Field(None, description="node features, e.g. 'a100|h100'")
    array_parallelism: PositiveInt | None = Field(
        None,
        description="at most this many cells of one sweep run at once (the array's %N "
        "throttle, kept across arrays when the matrix needs several); None = no limit",
    )
    array_size: PositiveInt | None = Field(
        None,
        description="most cells per job array (a site may cap a user's submitted jobs below "
        "MaxArraySize); None = the cluster's MaxArraySize",
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines run in the batch script before the cell, e.g. "
        "'module load cuda/12.1' or 'source /path/venv/bin/activate'",
    )
    srun_args: list[str] = Field(
        default_factory=list,
        description="extra srun arguments, e.g. ['--container-image=nvcr.io#nvidia/pytorch']",
    )
    python: str | None = Field(
        None,
        description="command that runs Python in the job, e.g. 'apptainer exec --nv img.sif "
        "python'; None = this runner's interpreter (it must be on a shared filesystem)",
    )
    signal_delay_s: PositiveInt = Field(
        120,
        description="seconds before the time limit at which SLURM warns the job so that it "
        "can requeue itself; SLURM may deliver it up to ~60 s late",
    )
    max_requeues: NonNegativeInt = Field(
        3, description="how often a cell may requeue after hitting its time limit"
    )
    job_name: str | None = Field(None, description="SLURM job name; None = the matrix name")
    sbatch_extra: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="further #SBATCH flags by long name, e.g. {reservation: ml, exclusive: true}",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SlurmExecutorOptions:
        if self.gres is not None and "gpus_per_task" in self.model_fields_set:
            raise ValueError("set either gpus_per_task or gres, not both")
        if self.gpus_per_cell > 1 and self.gpus_per_task > 1:
            raise ValueError(
                f"gpus_per_cell={self.gpus_per_cell} with gpus_per_task={self.gpus_per_task} "
                f"would hold {self.gpus_per_cell * self.gpus_per_task} GPUs per cell: "
                "gpus_per_cell counts the cell's GPUs, one per rank; set gpus_per_task: 1 (or "
                "0 for CPU ranks)"
            )
        held = gres_gpus(self.gres) if self.gres else None
        if held is not None and self.gpus_per_cell > 1 and held != self.gpus_per_cell:
            raise ValueError(
                f"gpus_per_cell={self.gpus_per_cell} ranks but gres {self.gres!r} gives the "
                f"cell {held} GPU(s): ask for gpu:{self.gpus_per_cell}, one per rank"
            )
        if self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"signal_delay_s ({self.signal_delay_s}) must be shorter than the time limit "
                f"({self.time_min} min)"
            )
        return self

    def cell_gpus(self, here: list[int] | None = None) -> int:
        """GPUs each cell holds (``here`` is unused: SLURM says what a node has)."""
        return gres_gpus(self.gres) if self.gres else self.gpus_per_task * self.gpus_per_cell


def gres_gpus(gres: str) -> int:
    """GPUs in a ``--gres`` request: ``gpu:a100:2`` -> 2, ``gpu`` -> 1, ``shard:2`` -> 0."""
    total = 0
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total
