"""The cell ledger under faults, for real: SIGKILL mid-epoch then resume into the same MLflow
run with identical results, an out-of-memory cell, cancel, and two concurrent sweeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.ledger import pid_alive
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import STARTS, make_tiny_dataset, matrix_text, processes_of, start_as, wait_for

pytestmark = pytest.mark.slow
# ~150 steps an epoch: slow enough to be killed in the middle of one.
DETERMINISTIC = [
    "training.deterministic=true",
    "training.max_epochs=4",
    "training.samples_per_volume=30",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _runner(cwd: Path, *args: str, start: str = "terminal") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=start_as(start),
    )


def _final_metrics(uri: str, run_id: str) -> dict[str, list[float]]:
    client = MlflowClient(tracking_uri=uri)
    return {
        key: [
            m.value
            for m in sorted(
                client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
            )
        ]
        for key in ("train_loss", "val_dice")
    }


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(
    project: Path, tiny_data: Path, capsys
) -> None:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    axes = "  model: [unet]\n  seed: [3]"
    ref = project / "ref.yaml"
    ref.write_text(
        matrix_text("reference", tiny_data, axes, "{kind: local, slots: 1}", uri, DETERMINISTIC)
    )
    assert main(["sweep", str(ref)]) == 0
    ref_plan = make_plan(ref)
    ref_state = ref_plan.states()[ref_plan.cells[0].id]
    expected = _final_metrics(uri, ref_state.run_id)

    victim = project / "victim.yaml"
    victim.write_text(
        matrix_text("victim", tiny_data, axes, "{kind: local, slots: 1}", uri, DETERMINISTIC)
    )
    plan = make_plan(victim)
    record = plan.ledger.cell(plan.cells[0].id)
    sweep = _runner(project, "sweep", str(victim))

    def in_epoch_3() -> bool:
        attempts = record.attempts()
        beat = attempts[-1].read("heartbeat") if attempts else None
        return bool(beat) and beat.get("epoch") == 2  # epoch 2 logged: epoch 3 is running

    wait_for(in_epoch_3, 120, "epoch 3 to start")
    status = record.attempt(1).read("status") or {}
    os.kill(int(status["pid"]), signal.SIGKILL)  # the training process itself, mid-epoch
    os.killpg(sweep.pid, signal.SIGKILL)  # and the sweep following it
    sweep.wait()
    wait_for(lambda: record.state().state == "failed", 30, "the cell to be seen as lost")
    lost = record.state()
    assert lost.reason.startswith("lost")
    run_id = lost.run_id
    assert run_id

    assert main(["resume", str(victim)]) == 0
    capsys.readouterr()
    done = record.state()
    assert (done.state, done.attempts, done.run_id) == ("done", 2, run_id)
    second = record.attempt(2).read("status") or {}
    assert second["resumed_from_epoch"] == 2  # continued from its last checkpoint
    got = _final_metrics(uri, run_id)
    assert got["val_dice"][-1] == expected["val_dice"][-1]
    assert got["train_loss"][-2:] == expected["train_loss"][-2:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("victim").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, no duplicate
    history = record.history()
    assert [h["state"] for h in history] == ["running", "done"]

    # Resume again: nothing left to do.
    assert main(["resume", str(victim)]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_out_of_memory_cell_gets_reason_oom(project: Path, tiny_data: Path, capsys) -> None:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "oom.yaml"
    # A real allocation far beyond this machine's memory (a 1e6-channel conv): the CPU
    # allocator refuses it at once and the cell records why.
    path.write_text(
        matrix_text(
            "oom",
            tiny_data,
            "  model: [segresnet]\n  model.init_filters: [1000000]",
            "{kind: debug}",
            uri,
        )
    )
    assert main(["sweep", str(path)]) == 1
    plan = make_plan(path)
    state = plan.states()[plan.cells[0].id]
    assert state.state == "failed" and state.reason.startswith("oom")
    assert main(["resume", "--only", "exception", str(path)]) == 0
    assert "nothing to resume" in capsys.readouterr().out  # filtered out: it is an oom
    assert main(["resume", "--only", "omm", str(path)]) == 2
    assert "did you mean 'oom'?" in capsys.readouterr().err


@pytest.mark.parametrize("start", STARTS)
def test_cancel_a_running_cell(project: Path, tiny_data: Path, capsys, start: str) -> None:
    """Started from a terminal or with SIGINT ignored (a script's `&`, nohup, cron, CI):
    `runner cancel` returns once the cell's processes are gone, the cell reads cancelled,
    its MLflow run is KILLED and the sweep ends."""
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / f"long_{start}.yaml"
    path.write_text(
        matrix_text(
            f"long_{start}",
            tiny_data,
            "  model: [unet]",
            "{kind: local, slots: 1}",
            uri,
            ["training.max_epochs=500"],
        )
    )
    plan = make_plan(path)
    record = plan.ledger.cell(plan.cells[0].id)
    sweep = _runner(project, "sweep", str(path), start=start)
    wait_for(
        lambda: record.state().state == "running" and record.state().progress.get("epoch"),
        120,
        "the cell to run",
    )
    cell_pid = int((record.attempt(1).read("status") or {})["pid"])
    assert main(["resume", "--cells", plan.cells[0].id[:6], str(path)]) == 2
    assert "is running" in capsys.readouterr().err  # never double-submitted
    assert main(["cancel", str(path)]) == 0
    assert "cancelled 1 cells (1 running jobs signalled)" in capsys.readouterr().out
    # Gone by the time cancel returns: the cell process and its children.
    assert not pid_alive(cell_pid) and processes_of(cell_pid) == []
    assert record.state().state == "cancelled"
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode is not None
    assert record.state().state == "cancelled", out
    status = record.attempt(1).read("status") or {}
    assert status.get("state") == "cancelled"
    run = MlflowClient(tracking_uri=uri).get_run(record.run_id)
    assert run.info.status == "KILLED"
    assert main(["cancel", str(path)]) == 0
    assert "nothing to cancel" in capsys.readouterr().out


def test_two_concurrent_sweeps_submit_each_cell_once(project: Path, tiny_data: Path) -> None:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "race.yaml"
    path.write_text(
        matrix_text(
            "race",
            tiny_data,
            "  model: [unet]\n  seed: [0, 1, 2]",
            "{kind: local, slots: 2}",
            uri,
            ["training.max_epochs=1"],
        )
    )
    a, b = _runner(project, "sweep", str(path)), _runner(project, "sweep", str(path))
    out_a, _ = a.communicate(timeout=300)
    out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    plan = make_plan(path)
    assert all(s.state == "done" and s.attempts == 1 for s in plan.states().values())
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.tags["runner.cell_id"] for r in runs) == sorted(c.id for c in plan.cells)
