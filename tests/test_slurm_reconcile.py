"""The ledger and SLURM agree, on the real single-node cluster: a job that dies before its
cell starts reads failed with SLURM's reason and its log, and `resume` takes it; an admin's
scancel of a running cell reads cancelled, with who did it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from runner.cli import main
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import TINY, make_tiny_dataset, wait_for
from tests.test_slurm import cluster  # noqa: F401 - the module-scoped cluster fixture

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _matrix(tmp_path: Path, name: str, setup: list[str], epochs: int = 2) -> Path:
    data = make_tiny_dataset(tmp_path / "data")
    path = tmp_path / f"{name}.yaml"
    base = [f"data.root={data}", *TINY, f"training.max_epochs={epochs}", "model=meshnet"]
    path.write_text(
        json.dumps(
            {
                "name": name,
                "recipe": "segmentation",
                "base": base,
                "axes": {"seed": [0]},
                "executor": {
                    "kind": "slurm",
                    "cpus_per_task": 1,
                    "gpus_per_task": 0,
                    "time_min": 10,
                    "setup": [f"export PYTHONPATH={ROOT}", *setup],
                },
                "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db"},
                "sweep_dir": str(tmp_path / "sweeps"),
            }
        )
    )
    return path


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id.split("_")[0]],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return out.stdout.strip()


def test_a_job_that_dies_before_its_cell_reads_failed_and_resumes(
    cluster: None,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _matrix(tmp_path, "dies", ["exit 3"])
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path, tmp_path)
    (state,) = plan.states().values()
    job_id = str(state.job_id)
    wait_for(lambda: _sacct_state(job_id).startswith("FAILED"), 120, "SLURM to call it FAILED")
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    (state,) = plan.states().values()
    assert state.state == "failed", state
    assert state.reason.startswith("slurm: FAILED (exit 3:0); log "), state.reason
    monitor = plan.ledger.cell(state.id).attempts()[-1].read("monitor") or {}
    assert monitor["log"] and Path(monitor["log"]).exists()

    # Resume takes it: fixed setup, same cell, a second attempt that runs to done.
    fixed = json.loads(path.read_text())
    fixed["executor"]["setup"] = [f"export PYTHONPATH={ROOT}"]
    path.write_text(json.dumps(fixed))
    assert main(["resume", "--only", "slurm", str(path)]) == 0
    wait_for(lambda: make_plan(path, tmp_path).states()[state.id].state == "done", 240, "done")
    assert make_plan(path, tmp_path).states()[state.id].attempts == 2


def test_an_admin_scancel_reads_cancelled_with_who(
    cluster: None,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _matrix(tmp_path, "admin", [], epochs=400)
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path, tmp_path)
    cid = plan.cells[0].id
    wait_for(lambda: plan.states()[cid].progress.get("epoch"), 180, "the cell to train")
    job_id = str(plan.states()[cid].job_id)
    subprocess.run(["scancel", job_id], check=True, timeout=30)  # as an admin would
    wait_for(lambda: _sacct_state(job_id).startswith("CANCELLED"), 120, "SLURM to cancel it")
    time.sleep(1)
    assert main(["status", str(path)]) == 0
    state = make_plan(path, tmp_path).states()[cid]
    assert state.state == "cancelled", state
    assert state.reason.startswith("cancelled: slurm: CANCELLED by 0"), state.reason
