"""Following cells: the sweep's live display on a terminal and plain lines elsewhere, big
status tables (a summary and the rows that matter), and ``runner status --watch`` as a real
process: it ends when no cell is in flight, and Ctrl-C or SIGTERM end it with exit 0.

Cell states come from a real ledger (``runner.ledger``) written the way a job writes it; a
"running" cell's process is a real process of this host (``sleep``), so the ledger reads it
running while it lives and lost once it is killed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console, RenderableType

from runner.cli.progress import LiveProgress, Rates
from runner.cli.status import show
from runner.cli.tables import BIG, status_view
from runner.ledger import Attempt, CellState, Ledger
from runner.matrix.cells import Cell
from tests.conftest import ROOT
from tests.e2e import STARTS, make_tiny_dataset, matrix_text, start_as

ANSI = re.compile(r"\x1b\[")


def _cells(n: int, name: str = "unet_adamw1e-3_s{i}") -> list[Cell]:
    return [
        Cell(f"{i:06d}abcdef", {"model": "unet" if i % 2 else "segresnet", "seed": i}, (),
             name.format(i=i))
        for i in range(n)
    ]  # fmt: skip


class Cells:
    """A real ledger; each helper writes a cell's files as its job would."""

    def __init__(self, root: Path, matrix: str = "m") -> None:
        self.ledger = Ledger(root / "sweeps", matrix)

    def _attempt(self, cid: str) -> Attempt:  # the next attempt, claimed and submitted
        record = self.ledger.cell(cid)
        attempt = record.claim("local", len(record.attempts()))
        assert attempt is not None
        attempt.write("job", {"job_id": f"job-{cid}", "executor": "local", "time": time.time()})
        return attempt

    def running(self, cid: str, pid: int, **progress: object) -> None:
        attempt = self._attempt(cid)
        host = socket.gethostname()
        attempt.write("status", {"state": "running", "host": host, "pid": pid, "time": time.time()})
        self.beat(cid, **progress)

    def beat(self, cid: str, **progress: object) -> None:
        attempt = self.ledger.cell(cid).attempts()[-1]
        attempt.write("heartbeat", {**progress, "time": time.time()})

    def ended(
        self, cid: str, state: str, reason: str | None = None, dice: float | None = None
    ) -> None:
        attempt = self.ledger.cell(cid).attempts() or [self._attempt(cid)]
        attempt[-1].write("status", {"state": state, "reason": reason, "best_val_dice": dice,
                                     "time": time.time()})  # fmt: skip

    def states(self, cells: list[Cell]) -> dict[str, CellState]:
        return self.ledger.states([c.id for c in cells])


def _render(parts: list[RenderableType], width: int = 200, terminal: bool = False) -> str:
    out = StringIO()
    show(Console(file=out, width=width, force_terminal=terminal, highlight=False), parts)
    return out.getvalue()


EPOCH = {"epoch": 3, "max_epochs": 10, "train_loss": 0.4123, "epoch_seconds": 20.0,
         "samples_per_s": 12.5, "gpu_peak_mem_gb": 3.25}  # fmt: skip


def test_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    cells, ledger = _cells(2), Cells(tmp_path)
    out = StringIO()
    follow = LiveProgress(Console(file=out, width=200), cells)
    assert not follow.live  # a StringIO is no terminal
    ledger.running(cells[0].id, os.getpid(), **EPOCH)
    follow(ledger.states(cells))
    follow(ledger.states(cells))  # nothing changed: no new line
    ledger.beat(cells[0].id, **(EPOCH | {"epoch": 4}))
    follow(ledger.states(cells))
    ledger.ended(cells[0].id, "done", dice=0.8123)
    ledger.ended(cells[1].id, "failed", reason="oom: CUDA out of memory")
    follow(ledger.states(cells))
    text = out.getvalue()
    assert not ANSI.search(text) and "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4, text  # epoch 3, epoch 4, done, failed: one line each
    assert "epoch 3/10 loss 0.412 ETA" in lines[0] and "1 running, 1 pending" in lines[0]
    assert "epoch 4/10" in lines[1]
    assert cells[0].run_name in lines[2] and "best val Dice 0.812" in lines[2]
    assert "oom: CUDA out of memory" in lines[3] and "1 done, 1 failed" in lines[3]


def test_live_display_on_a_terminal(tmp_path: Path) -> None:
    cells, ledger = _cells(3), Cells(tmp_path)
    ledger.ended(cells[2].id, "done", dice=0.7)  # ended before this sweep: not news
    out = StringIO()
    console = Console(file=out, width=160, height=30, force_terminal=True)
    ledger.running(cells[0].id, os.getpid(), **EPOCH)
    ledger.running(cells[1].id, os.getpid())  # started, no epoch yet
    with LiveProgress(console, cells) as follow:
        assert follow.live
        follow(ledger.states(cells))
        shown = out.getvalue()
        for needle in (cells[0].run_name, "3/10", "20s/epoch", "12.5 samples/s", "ETA ",
                       "loss 0.412", "GPU 3.2 GiB", cells[1].run_name, "starting",
                       "1 done, 2 running"):  # fmt: skip
            assert needle in shown, needle
        assert "━" in shown  # a bar
        assert "best val Dice 0.700" not in shown
        ledger.ended(cells[0].id, "done", dice=0.8123)
        follow(ledger.states(cells))
    text = out.getvalue()
    assert ANSI.search(text)  # a terminal gets the live display
    # The finished cell left one plain line; the cell done before the sweep none.
    assert text.count("best val Dice 0.812") == 1 and "best val Dice 0.700" not in text


def test_rates_and_eta_from_the_epochs_seen() -> None:
    rates = Rates()
    state = CellState("c", "running", attempts=1, progress={"epoch": 3, "max_epochs": 10})
    rates.see("c", state, now=100.0)
    assert rates.s_per_epoch("c") is None and rates.spent("c", 130.0) == 0.0
    state.progress = {"epoch": 5, "max_epochs": 10}
    rates.see("c", state, now=160.0)
    assert rates.s_per_epoch("c") == 30.0 and rates.spent("c", 170.0) == 10.0
    # A resume (a new attempt) starts the count over.
    rates.see("c", CellState("c", "running", attempts=2, progress={"epoch": 5}), now=500.0)
    assert rates.s_per_epoch("c") is None


def test_a_big_matrix_shows_a_summary_and_the_rows_that_matter(tmp_path: Path) -> None:
    cells, ledger = _cells(BIG * 3), Cells(tmp_path)
    late = cells[-5:]  # far down the matrix: shown only because they matter
    ledger.running(late[0].id, os.getpid(), **EPOCH)
    ledger.ended(late[1].id, "failed", reason="exception: ValueError: bad volume")
    ledger.ended(late[2].id, "diverged", reason="loss is nan")
    text = _render(status_view("m: 150 cells", cells, ledger.states(cells), 200, see_all="X"))
    assert "m: 150 cells; 50 of them below, running and failed first" in text
    assert "every cell: X" in text
    rows = [c.id for c in cells if c.id in text]
    assert len(rows) == BIG and {c.id for c in late[:3]} <= set(rows)
    assert text.index(late[0].id) < text.index(late[1].id) < text.index(cells[0].id)
    # By axis value: unet has 1 running, 73 pending, 1 diverged (columns in state order).
    assert re.search(r"model\s*│\s*unet\s*│\s*1\s*│\s*73\s*│\s*│\s*1\s*│", text), text
    assert "best val Dice" not in text  # nothing is done: an empty column is left out
    assert "progress / reason" in text and "bad volume" in text

    every = _render(status_view("m", cells, ledger.states(cells), 200, show_all=True))
    assert all(c.id in every and c.run_name in every for c in cells)


def test_empty_columns_are_left_out(tmp_path: Path) -> None:
    cells = _cells(4)
    text = _render(status_view("m", cells, Cells(tmp_path).states(cells), 200))
    header = next(line for line in text.splitlines() if "run name" in line)
    assert re.findall(r"[a-z][a-z ]*[a-z]", header) == [
        "cell",
        "run name",
        "model",
        "seed",
        "state",
    ]


@pytest.mark.parametrize("width", [30, 60, 90, 140])
def test_ids_and_run_names_are_never_truncated(tmp_path: Path, width: int) -> None:
    cells = _cells(6, name="segresnet_adamw1e-3_onecycle_dicece_patch128_s{i}")
    ledger = Cells(tmp_path)
    ledger.ended(cells[0].id, "failed", reason="exception: " + "a long reason " * 10)
    for terminal in (False, True):
        text = _render(status_view("m", cells, ledger.states(cells), width), width, terminal)
        plain = ANSI.sub("", re.sub(r"\x1b\[[0-9;]*m", "", text))
        for c in cells:
            assert c.id in plain and c.run_name in plain, (width, terminal, plain)


# --------------------------------------------------------------------------------------------
# `runner status --watch`, a real process
# --------------------------------------------------------------------------------------------

GOOD = "name: watched\nrecipe: segmentation\nbase: [data=demo]\naxes:\n  seed: [0, 1]\n"


def _watch(project: Path, *args: str, how: str = "terminal") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "status", "m.yaml", "--watch", *args],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=start_as(how),
    )  # fmt: skip


def _rest(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """What the watcher prints after its first line, and its stderr. Not communicate(): it
    reads the pipe's file descriptor and misses what readline() already buffered (the rest
    of the first view, when it came in the same chunk)."""
    assert proc.stdout is not None and proc.stderr is not None
    proc.wait(timeout=timeout)  # a few lines: the pipes hold them meanwhile
    return proc.stdout.read(), proc.stderr.read()


@pytest.fixture
def one_running(project: Path) -> Iterator[subprocess.Popen[bytes]]:
    """m.yaml with two cells: one done, one running as a live ``sleep`` of this host."""
    from runner.plan import make_plan

    (project / "m.yaml").write_text(GOOD)
    plan = make_plan(project / "m.yaml")
    ledger = Cells(project, "watched")
    sleeper = subprocess.Popen(["sleep", "600"])
    ledger.ended(plan.cells[0].id, "done", dice=0.5)
    ledger.running(plan.cells[1].id, sleeper.pid, **EPOCH)
    try:
        yield sleeper
    finally:
        sleeper.kill()
        sleeper.wait()


def test_watch_ends_when_no_cell_is_in_flight(
    project: Path, one_running: subprocess.Popen[bytes]
) -> None:
    proc = _watch(project, "--interval", "0.5")
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first view has started: the loop runs
    one_running.kill()  # the cell's process is gone: the ledger reads it lost
    out, err = _rest(proc, 120)
    out = first + out
    assert proc.returncode == 0, err
    assert "Traceback" not in err and not ANSI.search(out) and "\r" not in out
    assert "epoch 3/10" in out  # the first view
    assert "lost: the job's process is gone" in out  # the change, as a plain line
    assert out.rstrip().endswith("no cell is in flight; 2 cells: 1 done, 1 failed")


def test_watch_on_a_terminal_redraws_bars_until_the_end(project: Path) -> None:
    from runner.cli.status import watch
    from runner.plan import make_plan

    (project / "m.yaml").write_text(GOOD)
    plan = make_plan(project / "m.yaml")
    ledger = Cells(project, "watched")
    sleeper = subprocess.Popen(["sleep", "2"])  # the running cell ends on its own
    ledger.ended(plan.cells[0].id, "done", dice=0.5)
    ledger.running(plan.cells[1].id, sleeper.pid, **EPOCH)
    out = StringIO()
    console = Console(file=out, width=150, height=40, force_terminal=True)
    warnings: list[str] = []
    try:
        assert watch(plan, project / "m.yaml", console, 0.2, False, "", warnings.append) == 0
    finally:
        sleeper.wait()
    text = out.getvalue()
    assert ANSI.search(text) and "━" in text and "ETA 2m20s" in text and "GPU 3.2 GiB" in text
    assert "Ctrl-C stops watching" in text and warnings == []
    assert text.rstrip().endswith("no cell is in flight; 2 cells: 1 done, 1 failed")


@pytest.mark.parametrize("how", STARTS)
def test_watch_stops_on_ctrl_c_and_sigterm(
    project: Path, one_running: subprocess.Popen[bytes], how: str
) -> None:
    proc = _watch(project, "--interval", "0.5", how=how)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first view has started: the loop runs
    assert "watched: 2 cells" in first
    proc.send_signal(signal.SIGINT)
    if how == "sigint_ignored":
        # Started with SIGINT ignored (cmd &, nohup, CI): it can't be interrupted by SIGINT
        # (wait a few refreshes to see it carry on); SIGTERM ends it just as cleanly.
        time.sleep(3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
    out, err = _rest(proc, 60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopped watching; the cells run on" in out
    assert one_running.poll() is None  # watching never touches the cells


@pytest.mark.slow
def test_watch_follows_a_real_sweep_to_its_end(project: Path) -> None:
    data = make_tiny_dataset(project / "data")
    uri = f"sqlite:///{project / 'mlruns.db'}"
    (project / "m.yaml").write_text(
        matrix_text("watched", data, "  seed: [0, 1]", "{kind: local, slots: 1}", uri)
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = subprocess.run(
        [sys.executable, "-m", "runner", "sweep", "m.yaml", "--no-wait"],
        cwd=project, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    assert "background scheduler" in sweep.stdout
    proc = _watch(project, "--interval", "1")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and not ANSI.search(out) and "\r" not in out
    assert out.rstrip().endswith("2 cells: 2 done")
