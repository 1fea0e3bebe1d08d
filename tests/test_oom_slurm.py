"""A SLURM cell past its ``--mem`` (issue 30, item 1): the test cluster enforces memory with
cgroups (tests/infra/slurm_cluster.sh: task/cgroup, ConstrainRAMSpace), the kernel kills the
cell's process at the job's limit, SLURM accounting ends the job OUT_OF_MEMORY, and the cell is
recorded ``oom: host`` with the memory it asked for. Its twin with accounting's answer handed
in (the reason's exact form) is in tests/test_oom_remedies.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.job import memory
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import make_tiny_dataset, matrix_text

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_a_slurm_cell_past_its_mem_reads_host_memory(
    slurm_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cell builds a network whose ~7 GiB of weights the kernel grants (overcommit) but
    the job's 1 GiB cgroup can't back once they are written."""
    from runner.cli import main

    monkeypatch.chdir(tmp_path)
    data = make_tiny_dataset(tmp_path / "demo")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    executor = f"{{kind: slurm, mem_gb: 1, time_min: 10, setup: ['export PYTHONPATH={ROOT}']}}"
    axes = "  model: [segresnet]\n  model.init_filters: [8192]"
    path = tmp_path / "slurm_oom.yaml"
    text = matrix_text("slurm_oom", data, axes, executor, uri)
    path.write_text(text + f"sweep_dir: {tmp_path / 'sweeps'}\n")
    assert main(["sweep", str(path), "--wait"]) == 1
    plan = make_plan(path, workdir=tmp_path)
    state = plan.states()[plan.cells[0].id]
    assert state.state == "failed", state
    assert memory.oom_kind(state.reason) == "host", state.reason
    assert state.reason.startswith("oom: host: slurm: OUT_OF_MEMORY"), state.reason
    assert "--mem 1G" in state.reason, state.reason


def test_a_failed_job_whose_step_ran_out_of_memory_ends_out_of_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sacct's rows for the job above once accounting has them (submitit's srun step killed
    at the cgroup's limit, the batch script FAILED after it): the step's state is the job's
    end. A job that failed otherwise stays FAILED. Injected: which rows sacct prints when."""
    from runner.executors.slurm import cluster

    rows = "\n".join(
        [
            "714|FAILED|1:0",
            "714.batch|FAILED|1:0",
            "714.0|OUT_OF_MEMORY|0:125",
            "715|FAILED|1:0",
            "715.0|FAILED|1:0",
        ]
    )
    monkeypatch.setattr(cluster, "_sacct_rows", lambda ids, fields, timeout: (rows, None))
    ends, problem = cluster.job_ends(["714", "715"])
    assert problem is None
    assert ends["714"] == ("OUT_OF_MEMORY (step 714.0)", "0:125")
    assert ends["715"] == ("FAILED", "1:0")
