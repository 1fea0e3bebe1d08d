"""`make bench` keeps working: a quick run of the benchmarks that use the recipe's internals
(the first to break when the trainer changes) ends cleanly with figures. No timing is
asserted here; the figures themselves are read from bench/results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_quick_bench_runs_and_reports(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "plan",
            "--only",
            "trainer",
            "--only",
            "data",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    text = json.dumps(results)
    assert "failed" not in (tmp_path / "results.md").read_text().lower(), text[:2000]
    assert "Plan per cell vs Hydra multirun" in text and "Trainer step vs bare" in text
    assert "loader vs model" in text
