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


def test_quick_ink_benches_run_and_report(tmp_path: Path) -> None:
    """Lazy zarr / TIFF patch reads against whole-volume reads, and profiling N steps against
    training them (issue 28), in their smoke mode."""
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "lazy_read", "--only",
         "profile_overhead", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        r["benchmark"]: r
        for b in json.loads((tmp_path / "results.json").read_text())["benchmarks"].values()
        for r in b["rows"]
    }
    lazy = rows["Lazy zarr patch vs whole-volume read"]["values"]
    assert lazy["lazy"]["per_patch_s"] > 0 and lazy["whole"]["per_patch_s"] > 0
    assert "Lazy tiff patch vs whole-volume read" in rows
    overhead = rows["Profile overhead: profile 10 steps vs train 10 steps"]["values"]
    assert overhead["profile_s"] > 0 and overhead["train_s"] > 0
    assert rows["Profile prediction vs measured training time"]["values"]["measured_s"] > 0
