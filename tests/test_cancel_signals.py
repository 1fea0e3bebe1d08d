"""Cancel works however the processes were started: from a terminal, or the way a script's
``cmd &``, nohup, cron and many CI runners start them, with SIGINT ignored and inherited by
every child. Real processes, real signals, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.ledger import CellRecord, pid_alive
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import STARTS, make_tiny_dataset, matrix_text, processes_of, start_as, wait_for

# A checkpoint write that a real SIGINT interrupts from inside torch.save's pickler.
GUARDED_WRITE = textwrap.dedent(
    """
    import os, pathlib, signal, sys, torch
    from recipes.components.training.checkpoint import atomic_save
    from runner.job import signals

    path = pathlib.Path(sys.argv[1])
    atomic_save({"epoch": 1}, path)

    class InterruptsWhilePickled:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, delivered mid-save
            return (int, (7,))

    def write():
        atomic_save({"epoch": 2, "w": torch.ones(1000), "x": InterruptsWhilePickled()}, path)

    raised = "no"
    try:
        if sys.argv[2] == "job":  # as a runner job does
            with signals.handling(signals.LOCAL, signal.default_int_handler):
                write()
        else:
            write()
    except KeyboardInterrupt:
        raised = "KeyboardInterrupt"
    saved = torch.load(path, weights_only=False)
    print(raised, saved["epoch"], saved["x"], sorted(os.listdir(os.path.dirname(path))))
    handler = signal.getsignal(signal.SIGINT)
    print("ignored" if handler == signal.SIG_IGN else getattr(handler, "__name__", handler))
    """
)


def _guarded_write(tmp_path: Path, start: str, how: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", GUARDED_WRITE, str(tmp_path / "last.pt"), how],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        preexec_fn=start_as(start),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=True,
    )
    return out.stdout.splitlines()


@pytest.mark.parametrize("start", STARTS)
def test_an_interrupt_during_a_checkpoint_write_lands_after_it(tmp_path: Path, start: str) -> None:
    """`runner cancel` sends SIGINT; arriving mid-``torch.save`` it used to surface from the
    C++ writer as a RuntimeError (a cancelled cell read as failed). The write finishes, then
    the interrupt is raised as a KeyboardInterrupt: also in a job started with SIGINT
    ignored, because the job installs its handler itself."""
    result, handler = _guarded_write(tmp_path, start, "job")
    assert result == "KeyboardInterrupt 2 7 ['last.pt']"
    # The job's handler is undone after the job: the process keeps what it inherited.
    assert handler == ("ignored" if start == "sigint_ignored" else "default_int_handler")


def test_a_signal_ignored_on_purpose_stays_ignored_around_a_write(tmp_path: Path) -> None:
    """Outside a job the guard changes nothing of a process's own choice: an ignored SIGINT
    is neither turned into an exception nor left behind; the write lands."""
    result, handler = _guarded_write(tmp_path, "sigint_ignored", "bare")
    assert result == "no 2 7 ['last.pt']"
    assert handler == "ignored"


def test_a_cancelled_cell_reads_cancelling_while_its_process_runs(tmp_path: Path) -> None:
    """`status` never says cancelled while a process of the cell still runs."""
    import socket

    record = CellRecord(tmp_path, "abc123")
    attempt = record.attempt(1)
    attempt.dir.mkdir(parents=True)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        now = time.time()
        attempt.write("claim", {"host": socket.gethostname(), "pid": os.getpid(), "time": now})
        attempt.write("job", {"job_id": str(worker.pid), "time": now})
        attempt.write(
            "status",
            {"state": "running", "host": socket.gethostname(), "pid": worker.pid, "time": now},
        )
        attempt.write("heartbeat", {"epoch": 1, "time": now})
        assert record.state().state == "running"
        attempt.write("cancel", {"time": time.time()})
        assert record.state().state == "cancelling"
        worker.kill()
        worker.wait()
        assert record.state().state == "cancelled"
    finally:
        worker.kill()
    # On another host (a container, a SLURM node) its heartbeat says whether it runs.
    attempt.write("status", {"state": "running", "host": "node7", "pid": 1, "time": now})
    attempt.write("heartbeat", {"epoch": 1, "time": time.time()})
    assert record.state().state == "cancelling"
    attempt.write("heartbeat", {"epoch": 1, "time": time.time() - 60})
    assert record.state().state == "cancelled"
    attempt.write("heartbeat", {"epoch": 1, "time": time.time()})
    attempt.write("cancel", {"time": time.time(), "stopped": time.time()})
    assert record.state().state == "cancelled"  # `runner cancel` saw it gone


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _long_matrix(project: Path, data: Path, name: str) -> Path:
    path = project / f"{name}.yaml"
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path.write_text(
        matrix_text(
            name, data, "  model: [unet]", "{kind: local, slots: 1}", uri,
            ["training.max_epochs=500"],
        )
    )  # fmt: skip
    return path


@pytest.mark.slow
def test_a_sweep_started_in_the_background_by_a_script_is_cancelled(
    project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exactly as a user's script does it: `bash -c 'runner sweep m.yaml > sweep.log 2>&1 &'`
    (bash starts background jobs with SIGINT ignored). Cancel stops the cell for real and
    the sweep exits."""
    path = _long_matrix(project, tiny_data, "scripted")
    runner = Path(sys.executable).with_name("runner")
    started = subprocess.run(
        ["bash", "-c", f"'{runner}' sweep '{path}' > sweep.log 2>&1 & echo $!"],
        cwd=project,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    sweep_pid = int(started.stdout.strip())
    plan = make_plan(path, project)
    record = plan.ledger.cell(plan.cells[0].id)
    wait_for(lambda: record.state().progress.get("epoch"), 180, "the cell to train an epoch")
    cell_pid = int((record.attempt(1).read("status") or {})["pid"])
    ignored = Path(f"/proc/{sweep_pid}/status").read_text().split("SigIgn:")[1].split()[0]
    assert int(ignored, 16) & (1 << (signal.SIGINT - 1))  # what the cell inherited

    assert main(["cancel", str(path)]) == 0
    assert "1 running jobs signalled" in capsys.readouterr().out
    assert processes_of(cell_pid) == []
    assert record.state().state == "cancelled"
    wait_for(lambda: not pid_alive(sweep_pid), 60, "the sweep to exit")
    status = record.attempt(1).read("status") or {}
    assert status.get("state") == "cancelled"  # the cell recorded it itself: no kill needed
    run = MlflowClient(tracking_uri=plan.tracking_uri).get_run(record.run_id)
    assert run.info.status == "KILLED"
    time.sleep(2)
    assert record.state().state == "cancelled"  # and it stays so
    assert "Traceback" not in (project / "sweep.log").read_text()


@pytest.mark.slow
def test_a_cell_that_outlives_the_grace_period_is_killed(
    project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no grace, cancel kills every process of the cell at once; the cell reads
    cancelled, its MLflow run KILLED (ended by cancel: the job had no chance to)."""
    path = _long_matrix(project, tiny_data, "nograce")
    sweep = subprocess.Popen(
        [sys.executable, "-m", "runner", "sweep", str(path)],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    plan = make_plan(path, project)
    record = plan.ledger.cell(plan.cells[0].id)
    wait_for(lambda: record.state().progress.get("epoch"), 180, "the cell to train an epoch")
    cell_pid = int((record.attempt(1).read("status") or {})["pid"])
    assert main(["cancel", "--grace", "0", str(path)]) == 0
    assert "1 killed after 0 s" in capsys.readouterr().out
    assert processes_of(cell_pid) == []
    assert record.state().state == "cancelled"
    assert (record.attempt(1).read("cancel") or {}).get("stopped")
    sweep.communicate(timeout=60)
    run = MlflowClient(tracking_uri=plan.tracking_uri).get_run(record.run_id)
    assert run.info.status == "KILLED"
    assert main(["cancel", "--grace", "-1", str(path)]) == 2
    assert "--grace" in capsys.readouterr().err
