"""Output scripts can trust: `status --format json` carries native values and ISO times,
`report --format csv` writes only CSV to stdout, and a closed pipe ends quietly."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from runner.cli import main
from tests.conftest import ROOT
from tests.e2e import make_tiny_dataset, matrix_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("out")
    data = make_tiny_dataset(root / "data")
    path = root / "m.yaml"
    uri = f"sqlite:///{root / 'mlruns.db'}"
    axes = "  optimizer.lr: [1.0e-3, .inf]\n  seed: [0]"
    text = matrix_text("out", data, axes, "{kind: debug}", uri)
    path.write_text(text + f"sweep_dir: {root / 'sweeps'}\n")  # wherever the tests run from
    old = Path.cwd()
    os.chdir(root)  # artifacts land beside the store, not in the repository
    try:
        main(["sweep", str(path)])  # the .inf cell diverges: exit 1 is fine here
    finally:
        os.chdir(old)
    return path


def test_status_json_has_native_values_and_iso_times(
    swept: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(swept), "--format", "json"]) == 0
    text = capsys.readouterr().out

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    cells = json.loads(text, parse_constant=refuse)["cells"]
    lrs = sorted(str(c["axes"]["optimizer.lr"]) for c in cells)
    assert lrs == ["0.001", "inf"]  # a number stays a number; inf as a string
    assert all(c["axes"]["seed"] == 0 for c in cells)
    started = cells[0]["attempts"][0]["started"]
    assert datetime.fromisoformat(started).tzinfo is not None


def test_report_csv_stdout_is_only_csv(swept: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "report", str(swept), "--format", "csv",
         "--no-mlflow", "-o", str(tmp_path)],
        capture_output=True, text=True, cwd=swept.parent, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = list(csv.reader(io.StringIO(proc.stdout)))
    assert table and all(len(row) == len(table[0]) for row in table)
    assert "report files in" in proc.stderr and "report files in" not in proc.stdout


def test_a_closed_pipe_ends_quietly(swept: Path) -> None:
    runner = Path(sys.executable).with_name("runner")
    proc = subprocess.run(
        ["bash", "-c", f"'{runner}' status '{swept}' --format json | head -1"],
        capture_output=True, text=True, cwd=swept.parent, timeout=120,
    )  # fmt: skip
    assert proc.stdout.strip() == "{"
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
