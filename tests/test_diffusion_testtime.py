"""The diffusion recipe's cells through the runner as the MedSegDiff group's study runs them
(debug executor, real MLflow sqlite store, real NIfTI): batches of slices across all
volumes, the four Dice figures and the empty-slice rule as a param, a ``{started}`` run
name, the data check at plan/sweep, and the test split scored by ``runner evaluate`` as the
segmentation recipe's is (N samples, fused, seeded, on each input's grid)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlflow import MlflowClient

from recipes.components.data.demo_data import ensure_demo_dataset
from runner.cli import main
from runner.plan import make_plan
from tests.e2e import hold_out
from tests.test_predict import cwd

pytestmark = pytest.mark.slow
TEST_CASES = ["demo_004", "demo_005"]
SIZE = 16
BASE = [
    "data=demo",
    "model=medsegdiff_tiny",
    f"training.patch_size=[{SIZE},{SIZE}]",
    "training.batch_slices=6",
    "training.max_steps=3",
    "training.val_every=3",
    "training.log_every=1",
    "training.num_threads=1",
    "diffusion.sampling_steps=3",
    "diffusion.num_samples=2",
    "diffusion.timestep_spacing=linspace",
    "diffusion.eps_from_clipped_x0=true",
]


def _matrix(path: Path, data: Path, uri: str, extra: list[str] | None = None) -> Path:
    base = [*BASE, f"data.root={data}", *(extra or [])]
    path.write_text(
        f"name: {path.stem}\nrecipe: diffusion\nbase: {base!r}\n"
        'run_name: "tiny_b{training.batch_slices}_s{training.max_steps:K}_seed{seed}_{started}"\n'
        "axes:\n  seed: [0, 1]\nexecutor: {kind: debug}\n"
        f"tracking: {{uri: '{uri}'}}\n"
    )
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, Path]:
    """Two seeds trained on 4 demo volumes (2 of them validate), 2 more held out."""
    root = tmp_path_factory.mktemp("diffusion_tt")
    data = ensure_demo_dataset(root / "demo", cases=6, size=SIZE, seed=0)
    hold_out(data, TEST_CASES)
    uri = f"sqlite:///{root / 'mlruns.db'}"
    path = _matrix(root / "tt.yaml", data, uri, ["++data.test=imagesTs"])
    with cwd(root):
        assert main(["sweep", str(path)]) == 0
    return root, path, uri, data


def test_cells_log_the_four_dice_and_the_rule(swept: tuple[Path, Path, str, Path]) -> None:
    root, path, uri, _ = swept
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tt").experiment_id])
    assert len(runs) == 2
    for run in runs:
        metrics, params = run.data.metrics, run.data.params
        for key in ("val_dice_2d_single", "val_dice_2d_ensemble", "val_dice_3d_single",
                    "val_dice_3d_ensemble", "val_dice"):  # fmt: skip
            assert 0.0 <= metrics[key] <= 1.0, key
        assert metrics["val_dice_3d_ensemble"] == metrics["val_dice"]
        assert params["training.metrics.dice_2d_empty_label"] == "skip"
        assert params["training.batch_slices"] == "6"
        assert params["diffusion.timestep_spacing"] == "linspace"
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}
        assert steps == {1, 2, 3}
        # {started}: the time of the first start, in the run's name and the ledger's
        name = run.info.run_name
        assert name.startswith("tiny_b6_s3_seed") and "{started}" not in name
        assert len(name.rsplit("_", 2)[-2]) == 10  # ..._YYYY-MM-DD_HH-MM-SS
    with cwd(root):
        plan = make_plan(path)
    assert {c.run_name for c in plan.cells} == {r.info.run_name for r in runs}


def test_evaluate_scores_the_test_split_seeded_on_each_inputs_grid(
    swept: tuple[Path, Path, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, path, uri, data = swept
    with cwd(root):
        assert main(["evaluate", str(path)]) == 0
        plan = make_plan(path)
        cell = plan.cells[0]
        out_a, out_b = tmp_path / "a", tmp_path / "b"
        for out in (out_a, out_b):
            args = ["predict", str(path), "--cell", cell.run_name, "-i", str(data / "imagesTs")]
            assert main([*args, "-o", str(out), "--set", "predict.num_samples=3"]) == 0
        assert main([*args, "-o", str(tmp_path / "c"), "--tta"]) == 2
    assert "no mirroring TTA" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    client = MlflowClient(uri)
    for run in client.search_runs([client.get_experiment_by_name("tt").experiment_id]):
        assert 0.0 <= run.data.metrics["test_dice"] <= 1.0
    for case in TEST_CASES:
        a = nib.load(out_a / f"{case}.nii.gz")
        source = nib.load(data / "imagesTs" / f"{case}_0000.nii.gz")
        assert a.shape == source.shape and np.allclose(a.affine, source.affine)
        assert set(np.unique(np.asarray(a.dataobj))) <= {0, 1}
        b = nib.load(out_b / f"{case}.nii.gz")  # the same noise: the same labels
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    test_dir = plan.ledger.cell(cell.id).dir / "test" / "predictions"
    assert sorted(p.name for p in test_dir.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in TEST_CASES]


def test_a_missing_dataset_warns_at_plan_and_stops_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 002's 70 SLURM cells would otherwise queue against a missing $ISLES24_ROOT."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = _matrix(tmp_path / "missing.yaml", tmp_path / "not_here", uri, ["data.synthetic=false"])
    with cwd(tmp_path):
        assert main(["plan", str(path)]) == 0
        assert "not_here" in capsys.readouterr().err
        assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the data can't be read" in err and "not_here" in err
    assert not (tmp_path / "sweeps").exists()
