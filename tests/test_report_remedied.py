"""``runner report`` and cells that trained with out-of-memory remedies (issue 30, item 2):
marked in their groups by default, left out with ``--remedied exclude``, compared as groups of
their own with ``--remedied separate``.

Real parts: a debug-executor sweep of real MONAI nets into a real MLflow store, then ``runner
resume --only oom`` applying the matrix's remedy and training the cell again. Only the GPU
out-of-memory failure of the cell's first attempt is injected (its ledger status), as a CUDA OOM
can't happen on a CPU; tests/test_oom_remedies.py produces host OOMs for real.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner.cli import main
from runner.ledger import Status
from runner.plan import make_plan
from tests.e2e import make_tiny_dataset, matrix_text

pytestmark = pytest.mark.slow  # a real sweep and a resume

OOM = "oom: gpu: CUDA out of memory. Tried to allocate 2.00 GiB (injected: no GPU here)"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models x two seeds, all done; unet seed 2 only after its first attempt ran out of
    GPU memory and ``resume --only oom`` halved its batch."""
    root = tmp_path_factory.mktemp("remedied")
    data = make_tiny_dataset(root / "demo")
    path = root / "remedied.yaml"
    uri = f"sqlite:///{root / 'mlruns.db'}"
    axes = "  model: [unet, segresnet]\n  seed: [1, 2]"
    text = matrix_text("remedied", data, axes, "{kind: debug}", uri, ["training.batch_size=2"])
    path.write_text(text + "on_oom: {steps: [halve_batch]}\n")
    plan = make_plan(path)
    (oom_cell,) = [c for c in plan.cells if c.values == {"model": "unet", "seed": 2}]
    attempt = plan.ledger.cell(oom_cell.id).claim("debug", 0)
    assert attempt is not None
    attempt.save(Status(state="failed", reason=OOM, ended=time.time()))
    assert main(["sweep", str(path)]) == 0  # the three pending cells
    assert main(["resume", "--only", "oom", str(path)]) == 0
    state = make_plan(path).ledger.cell(oom_cell.id).state()
    assert (state.state, state.remedy) == ("done", ["halve_batch"]), state
    return path


def _report(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict, str]:
    capsys.readouterr()
    out_dir = path.parent / f"report{'-'.join(args)}"
    assert main(["report", str(path), "--no-mlflow", "-o", str(out_dir), *args]) == 0
    # The terminal's lines wrap where they will: compare words.
    return json.loads((out_dir / "report.json").read_text()), " ".join(
        capsys.readouterr().out.split()
    )


def test_remedied_cells_are_marked_excluded_or_separated(
    swept: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_plan(swept)
    (cid,) = [c.id for c in plan.cells if c.values == {"model": "unet", "seed": 2}]
    run_id = plan.states()[cid].run_id
    assert MlflowClient(plan.tracking_uri).get_run(run_id).data.tags["runner.remedy"] == (
        "halve_batch"
    )

    marked, out = _report(swept, capsys)
    groups = {g["group"]: g for g in marked["groups"]}
    assert set(groups) == {"unet", "segresnet"}
    assert (groups["unet"]["n"], groups["unet"]["remedied"]) == (2, 1)
    assert (groups["segresnet"]["n"], groups["segresnet"]["remedied"]) == (2, 0)
    assert marked["remedied"] == {"mode": "mark", "cells": {cid: ["halve_batch"]}}
    assert "2 (1 remedied)" in out
    assert f"{cid} (halve_batch)" in out and "--remedied exclude" in out

    excluded, out = _report(swept, capsys, "--remedied", "exclude")
    groups = {g["group"]: g for g in excluded["groups"]}
    assert (groups["unet"]["n"], groups["segresnet"]["n"]) == (1, 2)
    assert excluded["cells_done"] == 4  # done, only left out of the tables
    assert "left out of every table" in out

    separate, out = _report(swept, capsys, "--remedied", "separate")
    groups = {g["group"]: g for g in separate["groups"]}
    assert set(groups) == {"unet", "unet (remedied: halve_batch)", "segresnet"}
    assert [groups[g]["n"] for g in ("unet", "unet (remedied: halve_batch)", "segresnet")] == [
        1,
        1,
        2,
    ]
    # The remedied group is the unet configuration again: it stays out of the axis effects.
    unet_effect = next(e for e in separate["effects"] if e["value"] == "unet")
    assert unet_effect["groups"] == 1
    assert "compared as groups of their own, named with their remedies" in out


def test_an_unknown_remedied_mode_is_refused_with_the_choices(
    swept: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(swept), "--remedied", "drop"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mark" in err and "exclude" in err and "separate" in err
