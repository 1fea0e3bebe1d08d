"""`make gpu-check` cannot rot between the times a GPU is lent: the same script runs here in
``--tiny`` mode, every part at tiny sizes on the CPU, and its budget logic is exercised with a
real part. No figure is asserted: only that every part ends in figures or a stated reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.gpu import render_markdown
from bench.gpu.__main__ import NAMES
from bench.gpu.harness import STATUSES
from tests.conftest import ROOT

CUDA_ONLY = "no CUDA device"


def _check(out: Path, *args: str, timeout: int = 600) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--tiny", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    doc = json.loads((out / "gpu-check.json").read_text())
    return proc.returncode, doc, proc.stderr


@pytest.mark.slow
def test_tiny_run_ends_every_part_in_figures_or_a_reason(tmp_path: Path) -> None:
    rc, doc, stderr = _check(tmp_path)
    assert rc == 0, stderr[-3000:]
    assert doc["complete"] and doc["mode"] == "tiny"
    assert list(doc["parts"]) == list(NAMES)
    for key, part in doc["parts"].items():
        assert part["status"] in STATUSES and part["status"] != "error", (key, part)
        assert part["rows"] or part["reason"], key
        for row in part["rows"]:
            assert row["measured"] and row["ratio"], (key, row)
    for key in ("nccl_ddp", "bf16_numerics"):  # correctness checks hold at any size
        assert all(row["met"] for row in doc["parts"][key]["rows"]), doc["parts"][key]["rows"]
    if not doc["environment"]["cuda"]:
        parts = doc["parts"]
        # Every part ran its code; what only CUDA can measure says so.
        assert all(parts[k]["rows"] for k in NAMES), {k: p["reason"] for k, p in parts.items()}
        for key in ("bf16_step", "grad_checkpointing", "diffusion_sampling", "system_metrics"):
            assert CUDA_ONLY in parts[key]["reason"], (key, parts[key]["reason"])
        assert "gloo" in parts["nccl_ddp"]["rows"][0]["benchmark"]
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert markdown == render_markdown(doc)
    assert "| # | figure | measured | baseline | ratio | target | met? |" in markdown
    for part in doc["parts"].values():
        assert f"{part['number']}. {part['title']}" in markdown


@pytest.mark.slow
def test_a_part_projected_over_its_budget_is_skipped_and_the_json_still_written(
    tmp_path: Path,
) -> None:
    """A real tiny part (BF16 vs FP32 steps) asked for a million timed steps: after each
    configuration's warm-up step the projection overruns its budget, so every item is
    skipped with the projection as its reason, the part ends, and the JSON is written."""
    rc, doc, stderr = _check(
        tmp_path, "--only", "bf16_step", "--steps", "1000000", "--part-budget", "bf16_step=120"
    )
    assert rc == 0, stderr[-3000:]
    part = doc["parts"]["bf16_step"]
    assert part["status"] == "skipped" and not part["rows"], part
    assert part["budget_s"] == 120 and part["elapsed_s"] < 120
    skipped = {s["item"]: s["reason"] for s in part["skipped"] if CUDA_ONLY not in s["reason"]}
    assert set(skipped) == {f"{m} {a}" for m in ("segresnet", "dynunet", "mednext")
                            for a in ("fp32", "bf16")}  # fmt: skip
    for reason in skipped.values():
        assert "1000000 timed steps: projected" in reason and "s left" in reason, reason
    others = [doc["parts"][k] for k in NAMES if k != "bf16_step"]
    assert all(p["status"] == "skipped" and p["reason"] == "not selected (--only)" for p in others)
    assert "projected" in (tmp_path / "gpu-check.md").read_text()


def test_without_figures_the_section_says_not_measured_yet() -> None:
    assert render_markdown(None).startswith("GPU figures: not measured yet")
    assert render_markdown({"parts": {}}).startswith("GPU figures: not measured yet")


def test_every_wheel_is_pinned_to_the_version_installed_here() -> None:
    from bench.gpu.wheels import WHEELS, requirements

    pins = requirements()
    assert [p.split("==")[0] for p in pins] == list(WHEELS)
    assert all(p.split("==")[1] for p in pins)
    assert {"monai", "omegaconf", "hydra-core", "mlflow-skinny"} <= set(WHEELS)
