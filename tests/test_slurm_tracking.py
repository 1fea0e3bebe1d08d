"""Tracking from many SLURM tasks at once, on the real single-node cluster: 16 cells of one
array log into the default store (``sqlite:///mlruns.db`` beside the matrix) and none of
them fails on it, none loses a metric, and no (key, step) is logged twice.

The cluster has 2 CPUs, so the array runs 2 cells at a time; the test is about the runner's
path end to end (run creation, per-epoch batches, final states, spool upload by ``status``).
The tight-loop case, 16 writers in one burst with the store locked past MLflow's own busy
wait, is tests/test_sync.py's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.ledger import TERMINAL
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import TINY, make_tiny_dataset
from tests.test_slurm import cluster  # noqa: F401 - the module-scoped cluster fixture

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CELLS = 16
EPOCHS = 3


def test_16_concurrent_cells_lose_no_metric_on_the_default_store(
    cluster: None,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    data = make_tiny_dataset(tmp_path / "data")
    path = tmp_path / "many.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "many",
                "recipe": "segmentation",
                "base": [
                    f"data.root={data}",
                    *TINY,
                    f"training.max_epochs={EPOCHS}",
                    "model=meshnet",
                ],
                "axes": {"seed": list(range(CELLS))},
                "executor": {
                    "kind": "slurm",
                    "cpus_per_task": 1,
                    "gpus_per_task": 0,
                    "time_min": 20,
                    "setup": [f"export PYTHONPATH={ROOT}"],
                },
                # no tracking block: the default store, as a user's first matrix has it
                "sweep_dir": str(tmp_path / "sweeps"),
            }
        )
    )
    plan = make_plan(path, tmp_path)
    assert plan.tracking_uri == f"sqlite:///{tmp_path}/mlruns.db"
    assert main(["sweep", "--no-wait", str(path)]) == 0
    ids = {str(s.job_id).split("_")[0] for s in plan.states().values()}
    assert len(ids) == 1, f"not one array: {ids}"

    deadline = time.monotonic() + 1200
    while not all(s.state in TERMINAL for s in plan.states().values()):
        assert time.monotonic() < deadline, f"{CELLS} cells did not end within 1200 s"
        time.sleep(5)
    capsys.readouterr()
    assert main(["status", str(path)]) == 0  # uploads whatever a cell had to spool
    assert "warning" not in capsys.readouterr().err

    client = MlflowClient(plan.tracking_uri)
    states = make_plan(path, tmp_path).states()
    failed = {cid: s.reason for cid, s in states.items() if s.state != "done"}
    assert not failed, failed
    runs = {s.run_id for s in states.values()}
    assert len(runs) == CELLS
    for cid, state in states.items():
        run = client.get_run(state.run_id)
        assert run.info.status == "FINISHED", (cid, run.info.status)
        for key in ("train_loss", "lr", "val_dice", "epoch_seconds"):
            steps = sorted(m.step for m in client.get_metric_history(state.run_id, key))
            assert steps == list(range(1, EPOCHS + 1)), (cid, key, steps)  # each exactly once
        best = client.get_metric_history(state.run_id, "best_val_dice")
        assert [m.step for m in best] == [EPOCHS], (cid, best)
        spool = plan.ledger.cell(cid).dir / "spool"
        left = [p.name for p in spool.glob("*.json*")] if spool.exists() else []
        assert not left, f"{cid}: not uploaded: {left}"
