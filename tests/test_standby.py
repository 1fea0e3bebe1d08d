"""The local queue's warm standby, with real processes: the next cell's process starts and
does its imports while the slot is busy, and trains only after its go; cancelled while it
waits, it records cancelled and never trains; a queue that dies leaves it pending; resume
and a second sweep run every cell exactly once, into one MLflow run each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.ledger import Claim, Job, Ledger
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import TINY, make_tiny_dataset, start_as, wait_for

pytestmark = pytest.mark.slow


def _runner(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m runner ARGS`` as a script starts it (SIGINT ignored, no TTY, no stdin)."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=start_as("sigint_ignored"),
    )


def _log(plan, cell_id: str, attempt: int) -> str:  # type: ignore[no-untyped-def]
    job = plan.ledger.cell(cell_id).attempt(attempt).read("job") or {}
    err = plan.ledger.logs_dir / f"{job.get('job_id')}_0_log.err"
    return err.read_text() if err.exists() else ""


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_standby_trains_after_its_go_and_cancelled_while_warm_never_trains(
    project: Path,
) -> None:
    """Three cells on one slot. The second waits warm beside the first; cancelled while it
    waits, it records cancelled without training (no go, no MLflow run), and the third
    takes its place: started while the first trains, it trains only after its go, once the
    first has ended. `resume` then trains the second; every cell ends with one MLflow run."""
    data = make_tiny_dataset(project / "data")
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "warm.yaml"
    base = ["data=demo", f"data.root={data}", *(o for o in TINY if "max_epochs" not in o)]
    # The first trains long enough for the second to be cancelled while it waits warm.
    cells = ", ".join(f"{{seed: {i}, training.max_epochs: {n}}}" for i, n in enumerate([20, 1, 1]))
    path.write_text(
        f"name: warm\nrecipe: segmentation\nbase: {base!r}\ninclude: [{cells}]\n"
        f"executor: {{kind: local, slots: 1, standby: true}}\ntracking: {{uri: '{uri}'}}\n"
    )
    plan = make_plan(path)
    first, second, third = (plan.ledger.cell(c.id) for c in plan.cells)
    sweep = _runner(project, "sweep", str(path))
    wait_for(lambda: "waiting for a slot" in _log(plan, second.id, 1), 180, "the standby warm")
    assert "CUDA untouched" in _log(plan, second.id, 1)
    assert second.state().state == "submitted"  # its process waits; it trains nothing yet
    assert second.attempt(1).read("status") is None and second.attempt(1).read("go") is None
    assert first.state().state == "running"

    assert main(["cancel", "--cells", second.id, str(path)]) == 0
    assert second.state().state == "cancelled"
    # Its process takes the cancel's SIGINT, leaves its wait and records the outcome.
    wait_for(
        lambda: (second.attempt(1).read("status") or {}).get("state") == "cancelled",
        60,
        "the standby's own cancelled status",
    )
    assert second.attempt(1).read("go") is None and second.run_id is None  # never trained
    out, _ = sweep.communicate(timeout=300)
    assert first.state().state == third.state().state == "done", out
    # The third was submitted while the first trained, and began only at its go, which
    # came once the first had ended.
    ended = (first.attempt(1).read("status") or {})["ended"]
    go, status = third.attempt(1).read("go") or {}, third.attempt(1).read("status") or {}
    assert (third.attempt(1).read("job") or {})["time"] < ended <= go["time"] <= status["started"]
    assert "go: a slot is free" in _log(plan, third.id, 1)

    assert main(["resume", str(path)]) == 0
    states = plan.states()
    assert all(s.state == "done" for s in states.values()), states
    assert [s.attempts for s in states.values()] == [1, 2, 1]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("warm").experiment_id])
    assert sorted(r.data.tags["runner.cell_id"] for r in runs) == sorted(c.id for c in plan.cells)


def test_a_standby_whose_queue_is_gone_leaves_and_its_cell_reads_pending(
    project: Path,
) -> None:
    """A real standby process (imports and all) of a queue that died: it says so and leaves
    without recording anything, and the ledger reads the cell as pending again (the next
    sweep takes it), while a queue alive keeps it submitted."""
    ledger = Ledger(project / "sweeps", "gone")
    record = ledger.cell("c0ffee000000")
    attempt = record.claim("local", 0)
    assert attempt is not None
    queue = _dead_pid()
    attempt.save(Claim(host=os.uname().nodename, pid=queue, executor="local"))
    job = {
        "recipe": "segmentation",
        "overrides": ["data=demo", "model.size=tiny"],
        "tracking_uri": (project / "mlruns").as_uri(),  # no store to open: a file store
        "workdir": str(project),
    }
    script = (
        "import json, sys, types\n"
        "from pathlib import Path\n"
        "from runner.job import standby\n"
        "from runner.ledger import CellRecord\n"
        "job = types.SimpleNamespace(**json.loads(sys.argv[1]))\n"
        # The warm-up once on its own: its queue's watch would end a slow one (a loaded
        # machine's imports) before it could say whether CUDA was asked.
        "print('cuda asked:', standby.warm_up(job), flush=True)\n"
        "standby.wait(job, CellRecord(Path(sys.argv[2]), sys.argv[3]).attempt(1))\n"
        "print('went on')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(job), str(ledger.cells_dir), record.id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0 and "went on" not in done.stdout, done.stderr[-2000:]
    assert "cuda asked: False" in done.stdout  # the recipe's imports leave CUDA's devices alone
    assert "its queue is gone" in done.stderr
    assert attempt.read("status") is None
    attempt.save(Job(job_id=str(_dead_pid()), executor="local"))
    assert record.state().state == "pending"
    attempt.save(Claim(host=os.uname().nodename, pid=os.getpid(), executor="local"))
    assert record.state().state == "submitted"  # its queue may still write its go


def test_a_go_after_cuda_was_asked_restarts_the_process_with_the_slots_devices() -> None:
    """Should an import have asked CUDA for its devices, the go starts the process again
    (the same pid: the executor still sees its job) with the slot's CUDA_VISIBLE_DEVICES."""
    script = (
        "import os, sys\n"
        "if os.environ['CUDA_VISIBLE_DEVICES'] == '3':\n"
        "    print('again', os.getpid(), os.environ['OMP_NUM_THREADS']); sys.exit(0)\n"
        "print('first', os.getpid(), flush=True)\n"
        "from runner.job.standby import take_on\n"
        "from runner.ledger import Go\n"
        "take_on(Go(gpus=[3], threads=2), True)\n"
        "print('not restarted')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""},
        check=True,
    )
    first, again = done.stdout.split("\n")[:2]
    assert first.split()[0] == "first" and again.split()[0] == "again", done.stdout
    assert first.split()[1] == again.split()[1] and again.split()[2] == "2"
    assert "not restarted" not in done.stdout
