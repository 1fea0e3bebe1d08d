"""``runner sync``: a real ``mlflow server`` stopped mid-run, restarted after the cell ended;
the cell trained on, kept its metrics locally, and sync uploads them: nothing lost, nothing
doubled, and the run ends with the cell's state."""

from __future__ import annotations

import json
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


@pytest.mark.slow
def test_a_store_locked_past_the_retries_spools_and_status_uploads(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default sqlite store held locked longer than MLflow's own 20 s wait (what a
    writer on another node, or NFS's lock daemon, can do): the cell's logger does not fail,
    it spools; `status` leaves the spool of a running cell alone (it may still append) and
    uploads it once the cell has ended; a spooled batch that had reached the store after all
    is not doubled."""
    import socket
    import sqlite3

    from recipes.components.training.mlflow_logging import RunLogger
    from runner import tracking

    path = project / "m.yaml"
    path.write_text("name: locked\nrecipe: segmentation\naxes: {seed: [0]}\n")
    plan = make_plan(path, project)
    uri = plan.tracking_uri
    exp = tracking.ensure_experiment(uri, "locked")
    cell = plan.cells[0]
    record = plan.ledger.cell(cell.id)
    record.dir.mkdir(parents=True)
    record.set_run_id(tracking.start_cell_run(uri, exp, cell.run_name, {}))
    attempt = record.claim("local", 0)
    assert attempt is not None
    running = {"state": "running", "host": socket.gethostname(), "pid": os.getpid()}
    attempt.write("status", {**running, "time": time.time()})
    spool = record.dir / "spool"
    logger = RunLogger(uri, str(record.run_id), owns_run=False, spool_dir=spool, attempts=2)
    logger.log_metrics({"train_loss": 0.9, "lr": 0.1}, step=1)  # straight to the store
    # As if that batch's answer had been lost: it is in the store and in the spool.
    history = MlflowClient(uri).get_metric_history(str(record.run_id), "train_loss")
    (spool / "metrics.jsonl").parent.mkdir(parents=True, exist_ok=True)
    first = {"key": "train_loss", "value": 0.9, "step": 1, "timestamp": history[0].timestamp}
    (spool / "metrics.jsonl").write_text(json.dumps(first) + "\n")

    lock = sqlite3.connect(uri.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        logger.log_metrics({"train_loss": 0.5, "lr": 0.1}, step=2)  # 2 tries, then spooled
        assert logger.store_down
        logger.log_params({"model.name": "meshnet"})  # one try while the store is down
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    lines = (spool / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3, lines  # the step-1 copy, then step 2's two metrics
    capsys.readouterr()

    attempt.write("heartbeat", {"time": time.time()})
    assert plan.states()[cell.id].state == "running"
    assert main(["status", str(path)]) == 0  # running: its spool stays
    assert (spool / "metrics.jsonl").exists()
    attempt.write("status", {**running, "state": "done", "time": time.time()})
    assert main(["status", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert not (spool / "metrics.jsonl").exists() and list((spool / "synced").iterdir())
    client = MlflowClient(uri)
    for key in ("train_loss", "lr"):
        steps = sorted(m.step for m in client.get_metric_history(str(record.run_id), key))
        assert steps == [1, 2], (key, steps)  # nothing lost, nothing doubled
    assert client.get_run(str(record.run_id)).data.params["model.name"] == "meshnet"
