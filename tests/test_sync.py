"""``runner sync``: a real ``mlflow server`` stopped mid-run, restarted after the cell ended;
the cell trained on, kept its metrics locally, and sync uploads them: nothing lost, nothing
doubled, and the run ends with the cell's state."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import free_port, make_tiny_dataset, matrix_text, mlflow_server

pytestmark = pytest.mark.slow


def test_server_down_mid_run_then_sync(project: Path, tmp_path: Path, capsys) -> None:
    data = make_tiny_dataset(tmp_path / "demo")
    port = free_port()
    path = project / "m.yaml"
    epochs = 5
    extra = [f"training.max_epochs={epochs}", "training.samples_per_volume=30"]
    path.write_text(
        matrix_text(
            "sync",
            data,
            "  model: [unet]",
            "{kind: local, slots: 1}",
            f"http://127.0.0.1:{port}",
            extra,
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with mlflow_server(project, port):
        plan = make_plan(path)
        record = plan.ledger.cell(plan.cells[0].id)
        sweep = subprocess.Popen(
            [sys.executable, "-m", "runner", "sweep", str(path)],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 180
        while (record.state().progress.get("epoch") or 0) < 2:
            assert time.monotonic() < deadline and sweep.poll() is None, "no epoch 2"
            time.sleep(0.2)
    # The server is gone from epoch 2 or 3 on; the cell must train to its end regardless.
    out, _ = sweep.communicate(timeout=300)
    state = record.state()
    assert state.state == "done", out
    spooled = (record.dir / "spool" / "metrics.jsonl").read_text().splitlines()
    assert spooled, "nothing was kept locally"
    assert (record.dir / "spool" / "final.json").exists()

    with mlflow_server(project, port) as uri:
        assert main(["sync", str(path)]) == 0
        assert "synced 1 cells" in capsys.readouterr().out
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(state.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["runner.state"] == "done"
        for key in ("train_loss", "lr", "epoch_seconds"):
            steps = sorted(m.step for m in client.get_metric_history(state.run_id, key))
            assert steps == list(range(1, epochs + 1)), (key, steps)  # each epoch exactly once
        assert main(["sync", str(path)]) == 0
        assert "nothing to sync" in capsys.readouterr().out
        steps = [m.step for m in client.get_metric_history(state.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, epochs + 1))
