"""No benchmark rots unnoticed: each runs in its smoke mode (``python -m bench --smoke``: tiny
sizes, every code path, seconds each) and must end with figures and no error. No timing is
asserted; the figures of a smoke run mean nothing. The SLURM and Docker benchmarks run
against the suite's own cluster and engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import NAMES
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

#: Benchmarks that need nothing but this machine; then those of a cluster, of an engine.
LOCAL = (
    "plan",
    "startup",
    "trainer",
    "data",
    "tracking",
    "checkpointing",
    "makespan",
    "diffusion",
    "diffusion_samples",
    "asha",
    "loader",
    "ddp",
    "remedies",
)
SLURM = ("slurm", "slurm_status")
DOCKER = ("docker_start", "docker_makespan")
#: The ink study's, run at their quick sizes by their own test below.
INK = ("lazy_read", "profile_overhead")
#: What a benchmark writes instead of figures when it measured nothing.
NOTHING = ("skipped", "not measured")


def smoke(names: tuple[str, ...], out: Path) -> dict[str, Any]:
    """``python -m bench --smoke --only ...`` in a fresh process, as a user runs it; its
    results.json, after checking that every benchmark ended with figures."""
    only = [arg for name in names for arg in ("--only", name)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", *only, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert (out / "results.json").exists(), done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == {}, done.stderr[-4000:]
    assert done.returncode == 0, done.stderr[-4000:]
    assert results["mode"] == "smoke"
    for name in names:
        rows = results["benchmarks"][name]["rows"]
        assert rows, f"{name}: no figures"
        for row in rows:
            assert row["measured"] and row["measured"] not in NOTHING, (name, row)
            assert "nan" not in row["ratio"].lower(), (name, row)
    print(f"smoke CPU seconds: {results['cpu_s']}")
    return results


def test_every_benchmark_has_a_smoke_test() -> None:
    assert sorted(LOCAL + SLURM + DOCKER + INK) == sorted(NAMES)


def test_local_benchmarks_smoke(tmp_path: Path) -> None:
    results = smoke(LOCAL, tmp_path)
    text = json.dumps(results["benchmarks"])
    assert "Plan per cell vs Hydra multirun" in text and "Trainer step vs bare" in text
    assert "loader vs model" in text and "MLflow on vs off" in text
    assert "5 samples per window vs 1" in text
    # The warm standby ran: the second cell waited for its go, then took the slot.
    warm = results["benchmarks"]["makespan"]["details"]["warm_standby"]["cells"]
    first, second = sorted(warm, key=lambda c: c["submitted"])
    assert second["submitted"] < first["ended"] <= second["slot"] <= second["started"]
    assert "failed" not in (tmp_path / "results.md").read_text().lower()


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


@pytest.mark.slurm
def test_slurm_benchmarks_smoke(slurm_cluster: None, tmp_path: Path) -> None:
    smoke(SLURM, tmp_path)


@pytest.mark.docker
def test_docker_benchmarks_smoke(docker_engine: Any, tmp_path: Path) -> None:
    smoke(DOCKER, tmp_path)
