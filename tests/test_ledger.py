"""The ledger: atomic single-writer files, one winner per claim, states folded correctly."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runner.ledger import CellRecord, Ledger, read_json, write_json_atomic
from runner.matrix.cells import Cell


def _claim_many(root: str, ids: list[str], queue: mp.Queue, done: Any) -> None:  # type: ignore[type-arg]
    won = []
    for cid in ids:
        record = CellRecord(Path(root), cid)
        seen = record.state()  # decide on what was seen, as a sweep does
        if seen.state == "pending" and record.claim("local", seen.attempts) is not None:
            won.append(cid)
    queue.put(won)
    # Stay alive until every claimer is through: a claim whose process is gone before it
    # submitted counts as pending again (a sweep that died), which is not what this tests.
    done.wait(timeout=120)


def test_concurrent_claims_have_exactly_one_winner(tmp_path: Path) -> None:
    ids = [f"cell{i:03d}" for i in range(200)]
    queue: mp.Queue = mp.get_context("fork").Queue()  # type: ignore[type-arg]
    ctx = mp.get_context("fork")
    done = ctx.Barrier(4)
    procs = [
        ctx.Process(target=_claim_many, args=(str(tmp_path), ids, queue, done)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    won = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    flat = [cid for w in won for cid in w]
    assert sorted(flat) == ids  # every cell claimed once, by exactly one process
    for cid in ids:
        assert len(CellRecord(tmp_path, cid).attempts()) == 1


def test_atomic_write_survives_kill_mid_write(tmp_path: Path) -> None:
    """A writer SIGKILLed in a rewrite loop leaves a complete old or new file, never half."""
    target = tmp_path / "status.json"
    write_json_atomic(target, {"n": -1, "pad": "x" * 100_000})
    code = (
        "import sys; from pathlib import Path; from runner.ledger import write_json_atomic\n"
        "i = 0\n"
        "while True:\n"
        "    write_json_atomic(Path(sys.argv[1]), {'n': i, 'pad': 'x' * 100_000}); i += 1\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = read_json(target)
    assert data is not None and data["n"] >= 0 and len(data["pad"]) == 100_000
    assert not [
        p
        for p in tmp_path.iterdir()
        if p.name != "status.json" and not p.name.startswith(".status.json.")
    ]


def test_state_folding(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, "m")
    rec = ledger.cell("abc")
    assert rec.state().state == "pending"
    rec.write_cell(Cell("abc", {"seed": 0}, ("seed=0",), "s0"), "segmentation", [])
    attempt = rec.claim("local", 0)
    assert attempt is not None and rec.state().state == "queued"
    assert rec.claim("local", 0) is None  # a second claimer of attempt 1 loses
    attempt.write("job", {"job_id": "123", "time": time.time()})
    assert rec.state().state == "submitted" and rec.state().job_id == "123"
    attempt.write("status", {"state": "running", "time": time.time()})
    attempt.write("heartbeat", {"epoch": 2, "max_epochs": 5, "time": time.time()})
    s = rec.state()
    assert s.state == "running" and s.progress["epoch"] == 2
    attempt.write("monitor", {"reason": "lost: killed", "time": time.time()})
    s = rec.state()
    assert s.state == "failed" and s.reason == "lost: killed"
    attempt.write("status", {"state": "done", "best_val_dice": 0.8, "time": time.time()})
    s = rec.state()
    assert (s.state, s.best_val_dice, s.attempts) == ("done", 0.8, 1)


def test_claim_of_a_dead_sweep_is_pending_again(tmp_path: Path) -> None:
    rec = Ledger(tmp_path, "m").cell("abc")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    attempt = rec.claim("local", 0)
    assert attempt is not None
    claim = attempt.read("claim") or {}
    attempt.write("claim", {**claim, "pid": proc.pid})  # as if that dead process had claimed
    seen = rec.state()
    assert (seen.state, seen.attempts) == ("pending", 1)
    assert rec.claim("local", seen.attempts).number == 2  # type: ignore[union-attr]


def test_a_job_that_finishes_while_its_state_is_read_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Race seen for real (tests/test_background.py under load): the state was read as
    running, the job then wrote `done` and exited, and the pid check found it gone, so the
    cell read as failed/lost and `resume` would have run a finished cell again. The fault is
    injected at the exact moment between the two looks, which a real process can't hit on
    demand."""
    import runner.ledger.store as ledger_module

    rec = Ledger(tmp_path, "m").cell("abc")
    attempt = rec.claim("local", 0)
    assert attempt is not None
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    attempt.write("job", {"job_id": "1", "time": time.time()})
    attempt.write("status", {"state": "running", "pid": proc.pid, "host": socket.gethostname()})
    real = ledger_module._dead_here

    def finishes_then_dies(host: str | None, pid: int | None) -> bool:
        attempt.write("status", {"state": "done", "best_val_dice": 0.7, "time": time.time()})
        return real(host, pid)

    monkeypatch.setattr(ledger_module, "_dead_here", finishes_then_dies)
    s = rec.state()
    assert (s.state, s.best_val_dice) == ("done", 0.7)
    # Without the job's outcome, a dead process is lost.
    monkeypatch.setattr(ledger_module, "_dead_here", real)
    attempt.write("status", {"state": "running", "pid": proc.pid, "host": socket.gethostname()})
    assert rec.state().state == "failed" and "process is gone" in (rec.state().reason or "")


def test_run_id_is_recorded_once(tmp_path: Path) -> None:
    rec = Ledger(tmp_path, "m").cell("abc")
    rec.dir.mkdir(parents=True)
    assert rec.set_run_id("first") == "first"
    assert rec.set_run_id("second") == "first"
    assert rec.run_id == "first"


def test_secret_looking_values_are_never_logged() -> None:
    """Params and tags redact values under keys that look like credentials."""
    from omegaconf import OmegaConf

    from recipes.components.training.mlflow_logging import flatten_config
    from recipes.contract import REDACTED
    from runner.tracking import cell_tags

    cfg = OmegaConf.create(
        {
            "storage": {"api_key": "hunter2", "s3_secret": "x", "root": "/d"},
            "db_password": "pw",
            "hf_token": "t",
            "model": {"name": "unet"},
        }
    )
    flat = flatten_config(cfg)
    assert flat["storage.root"] == "/d" and flat["model.name"] == "unet"
    for key in ("storage.api_key", "storage.s3_secret", "db_password", "hf_token"):
        assert flat[key] == REDACTED
    tags = cell_tags("m", "abc", {"model": "unet", "storage.api_key": "hunter2"}, "local", None)
    assert tags["axis.model"] == "unet" and tags["axis.storage.api_key"] == REDACTED
    assert "hunter2" not in str(flat) + str(tags)
