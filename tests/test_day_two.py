"""Day two with the runner, as a user meets it: the same ledger from any directory, a sweep
that would train done cells again refused, and the commands that follow a sweep."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.ledger import Status
from runner.plan import make_plan, project_root
from tests.conftest import ROOT
from tests.e2e import TINY, make_tiny_dataset, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project (a pyproject.toml at its root) whose matrix, with a relative sweep_dir, store
    and data root, was swept from the project's root: one tiny cell, done."""
    project = tmp_path_factory.mktemp("project")
    (project / "pyproject.toml").write_text("[project]\nname = 'study'\n")
    make_tiny_dataset(project / "data" / "demo")
    (project / "matrix").mkdir()
    base = ["data=demo", "data.root=data/demo", *TINY, "training.max_epochs=1"]
    (project / "matrix" / "m.yaml").write_text(
        f"name: daytwo\nrecipe: segmentation\nbase: {base!r}\naxes:\n  seed: [0]\n"
        "executor: {kind: local, slots: 1}\ntracking: {uri: 'sqlite:///mlruns.db'}\n"
    )
    out = run_cli(project, "sweep", "matrix/m.yaml")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 done" in out.stdout
    return project


def test_the_same_matrix_reaches_the_same_ledger_and_store_from_any_directory(
    swept: Path, tmp_path: Path
) -> None:
    matrix = swept / "matrix" / "m.yaml"
    assert project_root(matrix) == swept
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = run_cli(elsewhere, "status", str(matrix))
    assert status.returncode == 0 and "1 cells: 1 done" in status.stdout, status.stdout
    plan = run_cli(elsewhere, "plan", str(matrix))
    assert f"ledger: {swept / 'sweeps' / 'daytwo'}" in plan.stdout, plan.stdout
    assert f"sqlite:///{swept / 'mlruns.db'}" in plan.stdout
    again = run_cli(elsewhere, "sweep", str(matrix))
    assert again.returncode == 0 and "nothing new to submit" in again.stdout, again.stdout
    # Nothing of the matrix landed where the command ran.
    assert sorted(p.name for p in elsewhere.iterdir()) == []


def test_a_sweep_that_would_train_done_cells_again_is_refused(swept: Path, tmp_path: Path) -> None:
    """A ledger made from another directory by a runner that resolved sweep_dir against the
    working directory: the cell is done there, not in the project's ledger. The sweep
    refuses, names both ledgers and the two ways on, and writes nothing."""
    old_cwd = tmp_path / "old"
    shutil.copytree(swept / "sweeps", old_cwd / "sweeps")
    fresh = tmp_path / "fresh"
    shutil.copytree(swept, fresh, ignore=shutil.ignore_patterns("sweeps", "mlruns.db"))
    matrix = fresh / "matrix" / "m.yaml"
    out = run_cli(old_cwd, "sweep", str(matrix))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"1 of its cells are done in another ledger, {old_cwd / 'sweeps' / 'daytwo'}" in (
        out.stderr
    )
    assert f"sweep_dir: {old_cwd / 'sweeps'}" in out.stderr
    assert "--ignore-other-ledgers" in out.stderr
    assert not (fresh / "sweeps").exists() and not (fresh / "mlruns.db").exists()
    assert make_plan(matrix).states()[make_plan(matrix).cells[0].id].state == "pending"


def test_a_sweep_ends_at_its_results_and_the_next_command(swept: Path) -> None:
    out = run_cli(swept, "sweep", "matrix/m.yaml", "--ignore-other-ledgers")
    assert "nothing new to submit" in out.stdout  # already done: no ending to show
    again = swept / "again.yaml"
    text = (swept / "matrix" / "m.yaml").read_text().replace("seed: [0]", "seed: [0, 1]")
    again.write_text(text.replace("name: daytwo", "name: daytwo2"))
    out = run_cli(swept, "sweep", str(again))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    best = lines.index("best groups so far (best val Dice, mean ± std over seeds):")
    mean, spread, rest = lines[best + 1].split(maxsplit=2)[0], lines[best + 1], lines[-1]
    assert float(mean) >= 0 and "± " in spread and "(n=2)" in spread
    assert rest == f"next: runner report {again}"


def test_logs_show_the_training_lines_and_a_cancel_no_traceback(swept: Path) -> None:
    plan = make_plan(swept / "matrix" / "m.yaml")
    cell = plan.cells[0]
    out = run_cli(swept, "logs", "matrix/m.yaml", cell.run_name)
    assert out.returncode == 0, out.stderr
    assert "_0_log.out <==" in out.stdout and "_0_log.err <==" in out.stdout
    assert "epoch 1/1" in out.stdout  # the recipe's line per epoch reaches the job's log
    wrong = run_cli(swept, "logs", "matrix/m.yaml", "nosuchcell")
    assert wrong.returncode == 2 and "no cell 'nosuchcell'" in wrong.stderr
    missing = run_cli(swept, "logs", "matrix/m.yaml", cell.id, "--attempt", "7")
    assert missing.returncode == 2 and "has no attempt 7; its attempts: 1" in missing.stderr


def test_show_prints_the_cells_composed_config(swept: Path) -> None:
    plan = make_plan(swept / "matrix" / "m.yaml")
    out = run_cli(swept, "show", "matrix/m.yaml", plan.cells[0].id[:6])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"# cell {plan.cells[0].id} ({plan.cells[0].run_name})")
    import yaml

    cfg = yaml.safe_load(out.stdout)
    assert cfg["seed"] == 0 and cfg["data"]["root"] == "data/demo"
    assert cfg["training"]["max_epochs"] == 1 and cfg["model"]["size"] == "tiny"


def test_rerun_trains_a_done_cell_again_in_a_new_run_and_keeps_the_old(swept: Path) -> None:
    from mlflow import MlflowClient

    plan = make_plan(swept / "matrix" / "m.yaml")
    record = plan.ledger.cell(plan.cells[0].id)
    old_run = record.run_id
    assert old_run
    refused = run_cli(swept, "rerun", "matrix/m.yaml")
    assert refused.returncode == 2 and "--cells" in refused.stderr
    out = run_cli(swept, "rerun", "matrix/m.yaml", "--where", "seed=0")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "rerunning 1 cells from scratch" in out.stdout
    new_run = record.run_id
    assert new_run and new_run != old_run and len(record.attempts()) == 2
    kept = record.dir / "superseded" / "0001"
    assert (kept / "run_id").read_text() == old_run and (kept / "checkpoints" / "last.pt").exists()
    client = MlflowClient(plan.tracking_uri)
    old, new = client.get_run(old_run), client.get_run(new_run)
    assert old.data.tags["runner.superseded"] == "true" and old.info.status == "FINISHED"
    assert new.info.status == "FINISHED" and "runner.superseded" not in new.data.tags
    # The new run trained from scratch: its first epoch is 1, and it has every epoch.
    assert [m.step for m in client.get_metric_history(new_run, "val_dice")] == [1]
    # Both attempts recorded the code they ran; the report compares one version.
    code = record.attempts()[-1].load(Status).code  # type: ignore[union-attr]
    assert (
        code and len(code["digest"]) == 16 and new.data.tags["runner.code_digest"] == code["digest"]
    )


def test_the_report_warns_when_compared_cells_ran_different_code(tmp_path: Path) -> None:
    from runner.report.publish import Report, code_versions, code_warning

    plan_dir = tmp_path / "p"
    plan_dir.mkdir()
    (plan_dir / "m.yaml").write_text(
        "name: codes\nrecipe: segmentation\nbase: [data=demo, model.size=tiny]\n"
        "axes:\n  seed: [0, 1, 2]\n"
    )
    plan = make_plan(plan_dir / "m.yaml")
    for cell, digest in zip(plan.cells, ("aaaa", "aaaa", "bbbb"), strict=True):
        attempt = plan.ledger.cell(cell.id).claim("local", 0)
        assert attempt is not None
        attempt.save(Status(state="done", code={"digest": digest}))
    versions = code_versions(plan, [c.id for c in plan.cells])
    assert sorted(map(len, versions.values())) == [1, 2]
    report = Report([], [], [], 3, 3, code_versions=versions)
    warning = code_warning(report, plan.matrix.file)
    assert warning and "aaaa: 2 cells, bbbb: 1 cells" in warning
    assert f"--cells {plan.cells[2].id}" in warning
    assert code_warning(Report([], [], [], 1, 1, code_versions={"aaaa": ["x"]}), Path("m")) is None


def test_cli_habits_version_completion_help_and_a_closed_pipe(swept: Path) -> None:
    import argparse

    from runner.cli.commands import build_parser
    from runner.sweep.selection import REASON_KINDS

    assert run_cli(swept, "--version").stdout.startswith("runner ")
    script = run_cli(swept, "--print-completion", "bash").stdout
    assert "_shtab_runner" in script and "rerun" in script and "logs" in script
    parser = build_parser()
    missing = []
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    resume_help = run_cli(swept, "resume", "--help").stdout.replace("\n", " ")
    assert all(kind in resume_help for kind in REASON_KINDS)
    piped = subprocess.run(
        f"{sys.executable} -m runner status matrix/m.yaml | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        cwd=swept,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def _ctrl_c_sweep(tmp_path: Path, name: str, epochs: int) -> tuple[subprocess.Popen[str], Any]:
    """A sweep of three cells on one local slot, as a user's terminal starts it (SIGINT at
    its default, its own process group: the terminal's Ctrl-C goes to that group); returns
    once its first cell trains."""
    from tests.e2e import start_as, wait_for

    data = make_tiny_dataset(tmp_path / "data")
    base = ["data=demo", f"data.root={data}", *TINY, f"training.max_epochs={epochs}"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nrecipe: segmentation\nbase: {base!r}\naxes:\n  seed: [0, 1, 2]\n"
        "executor: {kind: local, slots: 1}\ntracking: {uri: 'sqlite:///mlruns.db'}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "sweep", str(path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=start_as("terminal"),
        start_new_session=True,
    )
    plan = make_plan(path)
    wait_for(
        lambda: any(s.progress.get("epoch") for s in plan.states().values()),
        240,
        "the first cell's first epoch",
    )
    return proc, plan


def test_ctrl_c_stops_the_sweep_not_its_cells_and_says_what_next(tmp_path: Path) -> None:
    import signal

    proc, plan = _ctrl_c_sweep(tmp_path, "ctrlc", epochs=4)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the sweep's whole group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "1 cells keep running:" in stderr
    assert "2 cells waited for a slot and were dropped" in stderr
    assert f"runner cancel {plan.matrix.file}" in stderr
    assert f"runner sweep {plan.matrix.file}" in stderr
    states = plan.states()
    running = [c for c in plan.cells if states[c.id].attempts]
    dropped = [c for c in plan.cells if not states[c.id].attempts]
    assert len(running) == 1 and len(dropped) == 2
    assert all(states[c.id].state == "pending" for c in dropped)  # given back, no attempt
    from tests.e2e import wait_for

    wait_for(lambda: plan.states()[running[0].id].state == "done", 240, "the cell to finish")


def test_a_second_ctrl_c_cancels_the_running_cells(tmp_path: Path) -> None:
    import signal

    from tests.e2e import wait_for

    proc, plan = _ctrl_c_sweep(tmp_path, "ctrlc2", epochs=50)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.stderr is not None
    seen = ""
    while "press Ctrl-C again" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=180)[1]
    assert proc.returncode == 130 and "cancelled 1 cells" in rest, seen + rest
    (cell,) = [c for c in plan.cells if plan.states()[c.id].attempts]
    wait_for(lambda: plan.states()[cell.id].state == "cancelled", 60, "the cell cancelled")
