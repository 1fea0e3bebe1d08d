"""Day two with the runner, as a user meets it: the same ledger from any directory, a sweep
that would train done cells again refused, and the commands that follow a sweep."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.plan import make_plan, project_root
from tests.conftest import ROOT
from tests.e2e import TINY, make_tiny_dataset

pytestmark = pytest.mark.slow


def _runner(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``runner ARGS`` as a user types it, in ``cwd``, with no terminal and no stdin."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )


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
    out = _runner(project, "sweep", "matrix/m.yaml")
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
    status = _runner(elsewhere, "status", str(matrix))
    assert status.returncode == 0 and "1 cells: 1 done" in status.stdout, status.stdout
    plan = _runner(elsewhere, "plan", str(matrix))
    assert f"ledger: {swept / 'sweeps' / 'daytwo'}" in plan.stdout, plan.stdout
    assert f"sqlite:///{swept / 'mlruns.db'}" in plan.stdout
    again = _runner(elsewhere, "sweep", str(matrix))
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
    out = _runner(old_cwd, "sweep", str(matrix))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"1 of its cells are done in another ledger, {old_cwd / 'sweeps' / 'daytwo'}" in (
        out.stderr
    )
    assert f"sweep_dir: {old_cwd / 'sweeps'}" in out.stderr
    assert "--ignore-other-ledgers" in out.stderr
    assert not (fresh / "sweeps").exists() and not (fresh / "mlruns.db").exists()
    assert make_plan(matrix).states()[make_plan(matrix).cells[0].id].state == "pending"
