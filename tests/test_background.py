"""`runner sweep --no-wait` on an executor whose queue lives in the runner (local slots,
Docker GPUs): a real detached scheduler process keeps the slots busy after the sweep returns;
killing it loses nothing and submits nothing twice; `runner cancel` empties its queue."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.ledger import pid_alive
from runner.plan import Plan, make_plan
from tests.e2e import STARTS, make_tiny_dataset, matrix_text, processes_of, start_as, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _matrix(project: Path, data: Path, name: str, epochs: int) -> Path:
    path = project / f"{name}.yaml"
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path.write_text(
        matrix_text(
            name,
            data,
            "  model: [unet]\n  seed: [0, 1, 2]",
            "{kind: local, slots: 1, standby: true}",  # its standby is part of the queue
            uri,
            [f"training.max_epochs={epochs}"],
        )
    )
    return path


def _hand_off(path: Path, capsys: pytest.CaptureFixture[str], start_as_: str = "terminal") -> int:
    """Run `runner sweep --no-wait` (here, or in a child started as ``start_as_``); return the
    background scheduler's pid."""
    start = time.monotonic()
    if start_as_ == "terminal":
        assert main(["sweep", "--no-wait", str(path)]) == 0
        out = capsys.readouterr().out
    else:
        done = subprocess.run(
            [sys.executable, "-m", "runner", "sweep", "--no-wait", str(path)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            preexec_fn=start_as(start_as_),
            timeout=300,
            check=False,
        )
        out = done.stdout
        assert done.returncode == 0, done.stdout + done.stderr
    assert "handed 3 cells to a background scheduler" in out, out
    # It returns once the cells are claimed, long before three of them could train.
    assert time.monotonic() - start < 60
    match = re.search(r"\(pid (\d+)\)", out)
    assert match, out
    return int(match.group(1))


def _states(plan: Plan) -> list[str]:
    return [s.state for s in plan.states().values()]


def test_sweep_returns_and_the_scheduler_runs_every_cell_one_slot_at_a_time(
    project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _matrix(project, tiny_data, "bg", epochs=2)
    plan = make_plan(path)
    pid = _hand_off(path, capsys)
    assert sum(s != "done" for s in _states(plan)) >= 2  # still queued when sweep returned

    # A second sweep finds every cell taken: nothing is submitted twice.
    assert main(["sweep", "--no-wait", str(path)]) == 0
    assert "nothing new to submit" in capsys.readouterr().out
    assert main(["status", str(path)]) == 0
    assert f"background scheduler: pid {pid}" in capsys.readouterr().out

    in_flight_seen = 0
    deadline = time.monotonic() + 300
    while (states := _states(plan)) != ["done"] * 3:
        in_flight = states.count("running")
        assert in_flight <= 1, states  # never more cells running than slots,
        # and at most one process more: the warm standby beside them (runner.job.standby)
        assert in_flight + states.count("submitted") <= 2, states
        in_flight_seen = max(in_flight_seen, in_flight)
        assert not {"failed", "pending"} & set(states), states
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    assert in_flight_seen == 1
    wait_for(lambda: not pid_alive(pid), 30, "the scheduler to exit")
    log = next((plan.ledger.root / "scheduler").glob("*.log")).read_text()
    assert "queue empty, every job ended; submitted 3 cells" in log
    assert all(plan.ledger.cell(c.id).state().attempts == 1 for c in plan.cells)
    assert sorted(r.info.status for r in _runs(project, "bg")) == ["FINISHED"] * 3


def _runs(project: Path, name: str) -> list[Any]:
    """The MLflow runs of matrix ``name`` in the project's sqlite store."""
    client = MlflowClient(f"sqlite:///{project / 'mlruns.db'}")
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    return list(client.search_runs([exp.experiment_id]))


def test_a_killed_scheduler_leaves_its_queue_pending_and_nothing_runs_twice(
    project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _matrix(project, tiny_data, "bgkill", epochs=3)
    plan = make_plan(path)
    pid = _hand_off(path, capsys)
    wait_for(lambda: "running" in _states(plan), 120, "the first cell to run")
    os.kill(pid, signal.SIGKILL)
    # The queued cells were claimed by a process that is gone: they are pending again,
    # while the cell already running carries on in its own process.
    wait_for(lambda: _states(plan).count("pending") == 2, 30, "the queue to read pending")
    assert main(["sweep", "--wait", str(path)]) == 0
    assert "submitted 2 cells" in capsys.readouterr().out
    wait_for(lambda: _states(plan) == ["done"] * 3, 120, "every cell to finish")
    for c in plan.cells:  # each cell ran once (a dead claim, or a standby left, is no run)
        record = plan.ledger.cell(c.id)
        assert sum(a.read("status") is not None for a in record.attempts()) == 1
    assert len(_runs(project, "bgkill")) == 3


@pytest.mark.parametrize("start", STARTS)
def test_cancel_empties_the_background_queue(
    project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str], start: str
) -> None:
    path = _matrix(project, tiny_data, f"bgcancel_{start}", epochs=200)
    plan = make_plan(path)
    pid = _hand_off(path, capsys, start)

    def training() -> list[Any]:
        return [c for c in plan.cells if plan.ledger.cell(c.id).state().progress.get("epoch")]

    wait_for(training, 120, "the first cell to train an epoch")
    (running,) = training()
    cell_pid = int((plan.ledger.cell(running.id).attempt(1).read("status") or {})["pid"])
    assert main(["cancel", str(path)]) == 0
    # The running cell and the warm standby beside it (runner.job.standby) are signalled.
    assert "cancelled 3 cells (2 running jobs signalled)" in capsys.readouterr().out
    assert processes_of(cell_pid) == []  # stopped by the time cancel returns
    wait_for(lambda: not pid_alive(pid), 60, "the scheduler to exit")
    assert _states(plan) == ["cancelled"] * 3
    trained = [c.id for c in plan.cells if plan.ledger.cell(c.id).attempt(1).read("heartbeat")]
    assert trained == [running.id]  # the standby and the queued one never trained
    (run,) = _runs(project, f"bgcancel_{start}")
    assert run.info.status == "KILLED" and run.data.tags["runner.state"] == "cancelled"
