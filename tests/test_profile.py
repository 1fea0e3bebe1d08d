"""``runner profile``: each distinct cell shape trains a few steps where the cells would run
(a local process here; in-process with --executor debug), and the figures predict the run:
step time, voxels/s, data wait, peak memory, epoch and run time, GPU-hours; an out-of-memory
cell is a result with the size it reached; ``runner plan`` estimates from the figures
("profiled"). Real recipe, real zarr volumes, a real allocation the CPU allocator refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recipes.components.data.scroll_demo_data import ensure_scroll_demo
from runner.cli import main
from runner.plan import make_plan
from runner.report.estimate import PROFILED

pytestmark = pytest.mark.slow

SHAPE = (32, 64, 64)  # z, y, x: a 16^3 grid of 4 x 4 x 2 patches a volume


@pytest.fixture(scope="module")
def scroll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_scroll_demo(tmp_path_factory.mktemp("scroll") / "s", shape=SHAPE)


def _matrix(path: Path, scroll: Path, axes: str, executor: str = "{kind: local, slots: 1}") -> Path:
    base = [
        "data=scroll_demo",
        f"data.root={scroll}",
        "model=unet",
        "model.size=tiny",
        "training.patch_size=[16,16,16]",
        "training.patch_stride=[16,16,16]",
        "training.num_threads=1",
        "training.max_epochs=3",
    ]
    path.write_text(
        f"name: {path.stem}\nrecipe: segmentation\nbase: {base!r}\naxes:\n{axes}\n"
        f"executor: {executor}\ntracking: {{uri: 'sqlite:///{path.parent / 'mlruns.db'}'}}\n"
    )
    return path


def test_profile_runs_each_shape_once_and_feeds_the_plan_estimate(
    scroll: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    # Two seeds and two learning rates: one shape (a step costs the same), four cells.
    path = _matrix(
        tmp_path / "ink.yaml", scroll, "  optimizer.lr: [1.0e-3, 3.0e-4]\n  seed: [0, 1]"
    )
    assert main(["profile", str(path), "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 cells, 1 distinct shapes, 4 steps each on executor local" in out
    assert "predicted runs" in out
    plan = make_plan(path)
    [shape] = json.loads((plan.ledger.root / PROFILED).read_text())["shapes"].values()
    assert shape["status"] == "ok" and shape["executor"] == "local"
    assert shape["job_id"] and shape["device"] == "cpu"  # a process of its own
    # The grid: 2 volumes of 4 x 4 x 2 patches, batch 2 (the default): 32 steps an epoch.
    assert (shape["steps_per_epoch"], shape["total_steps"], shape["epochs"]) == (32, 96, 3)
    assert shape["steps"] == 4 and shape["measured_steps"] == 3  # the first is warm-up
    assert shape["step_s"] > 0 and 0 <= shape["data_wait_fraction"] <= 1
    assert shape["patches_per_step"] == 2 and shape["peak_rss_gb"] > 0.1
    assert math.isclose(shape["voxels_per_s"], 2 * 16**3 / shape["step_s"])
    assert math.isclose(shape["epoch_s"], 32 * shape["step_s"])
    assert shape["loader_worker_rss_gb"] == []  # num_workers 0: the process loads
    assert set(shape["cells"]) == {c.id for c in plan.cells}
    for cell in shape["cells"].values():
        assert math.isclose(cell["run_s"], 96 * shape["step_s"]) and cell["gpu_hours"] == 0
    # Profiling trains none of the matrix's cells, and records none.
    assert {s.state for s in plan.states().values()} == {"pending"}
    assert not (plan.ledger.root / "cells").exists()

    assert main(["plan", str(path), "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["gpu_hours"]["estimate"]
    assert estimate["estimated"] == estimate["profiled"] == 4 and estimate["cannot"] == []
    assert math.isclose(estimate["wall_hours"], 4 * 96 * shape["step_s"] / 3600)
    assert estimate["by_config"][0]["source"] == "profiled"
    assert main(["plan", str(path)]) == 0
    assert "(profiled: `runner profile`'s step time x each cell's steps)" in capsys.readouterr().out


def test_a_cell_out_of_memory_is_a_result_with_the_size_it_reached(
    scroll: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A real allocation far beyond this machine's memory (a 100,000-channel convolution at
    full resolution, about 100 GB): the CPU allocator refuses it at once, and the profile
    reports it beside the cell that fits, instead of crashing."""
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("overcommit_memory=1: the kernel would grant the allocation and kill later")
    monkeypatch.chdir(tmp_path)
    axes = (
        "  training.batch_size: [1, 2]\n"
        "  model.channels: [[8, 16], [100000, 16]]\n  model.strides: [[2], [1]]\n"
        "  training.patch_size: [[16, 16, 16], [64, 64, 32]]\n"
        "  training.patch_stride: [[16, 16, 16], [64, 64, 32]]\n"
        "  model.num_res_units: [0, 0]\n"
        "zip: [[training.batch_size, model.channels, model.strides, training.patch_size,"
        " training.patch_stride, model.num_res_units]]"
    )
    path = _matrix(tmp_path / "oom.yaml", scroll, axes, "{kind: debug}")
    assert main(["profile", str(path), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "out of memory in the step phase after 0 step(s), peak RSS" in out
    plan = make_plan(path)
    shapes = json.loads((plan.ledger.root / PROFILED).read_text())["shapes"]
    by_batch = {s["shape"]["batch"]: s for s in shapes.values()}
    assert by_batch[1]["status"] == "ok" and by_batch[1]["run_s"] > 0
    oom = by_batch[2]
    assert oom["status"] == "oom" and oom["phase"] == "step" and oom["steps"] == 0
    assert oom["tried_to_allocate_gb"] > 50 and "can't allocate memory" in oom["message"]
    assert oom["peak_rss_gb"] > 0 and "run_s" not in oom
    # The estimate takes the cell that fits and names the one it can't.
    assert main(["plan", str(path), "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["gpu_hours"]["estimate"]
    assert estimate["profiled"] == 1 and len(estimate["cannot"]) == 1


def test_profile_refuses_nonsense_before_anything_runs(
    scroll: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _matrix(tmp_path / "m.yaml", scroll, "  seed: [0]", "{kind: debug}")
    assert main(["profile", str(path), "--steps", "0"]) == 2
    assert "--steps: give a number of steps >= 1, not 0" in capsys.readouterr().err
    assert main(["profile", str(path), "--cells", "nosuchcell"]) == 2
    assert "no cell 'nosuchcell' in this matrix" in capsys.readouterr().err
    assert not (tmp_path / "sweeps" / "m" / "profile").exists()


@pytest.mark.slurm
def test_profile_runs_where_the_cells_would_run_on_slurm(
    scroll: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    slurm_cluster: None,
) -> None:
    """A SLURM matrix is profiled as a SLURM job on the cells' partition (this worker's)."""
    from tests.conftest import ROOT, drain_partition, worker_partition

    monkeypatch.chdir(tmp_path)
    executor = (
        "{kind: slurm, cpus_per_task: 1, gpus_per_task: 0, time_min: 5, "
        f"setup: ['export PYTHONPATH={ROOT}']}}"
    )
    path = _matrix(tmp_path / "onslurm.yaml", scroll, "  seed: [0, 1]", executor)
    try:
        assert main(["profile", str(path), "--steps", "3"]) == 0
    finally:
        drain_partition(worker_partition())
    assert "on executor slurm" in capsys.readouterr().out
    [shape] = json.loads((make_plan(path).ledger.root / PROFILED).read_text())["shapes"].values()
    assert shape["status"] == "ok" and shape["executor"] == "slurm" and shape["steps"] == 3
    assert shape["job_id"] and shape["job_id"].split("_")[0].isdigit()  # SLURM's job id
    assert len(shape["cells"]) == 2 and shape["run_s"] > 0
