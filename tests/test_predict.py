"""``runner predict`` / ``runner evaluate MATRIX`` / ``runner report`` at test time, on real
trained cells (debug executor, real MLflow sqlite store, real NIfTI):

- the demo dataset (2 channels) with nnU-Net's imagesTs/labelsTs held out (``data.test``):
  test metrics land in each cell's own run and equal MONAI's Dice on the written files; the
  report compares groups on the test cases exactly as scipy does; an ensemble is the mean of
  its members' probabilities; bad inputs are one clear error that writes nothing;
- the real T1 volume of Debian's ITK examples (LSA, 2x2x3 mm) trained at 4 mm in RAS:
  predictions land on each input's own grid, whatever its orientation, shape or origin.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from monai.metrics import DiceMetric
from omegaconf import OmegaConf
from scipy import stats

from recipes.components.data.demo_data import ensure_demo_dataset
from recipes.contract import ModelRef
from runner.cli import main
from runner.errors import RunnerError
from runner.plan import make_plan
from runner.testtime.matrix_eval import evaluate_cells
from runner.testtime.select import Member, checkpoint, find_cell
from tests.e2e import hold_out, matrix_text
from tests.test_real_data import DATA, IMAGE, LABELS, _ensure_package

pytestmark = pytest.mark.slow
TEST_CASES = ["demo_006", "demo_007", "demo_008", "demo_009"]


@contextmanager
def cwd(path: Path) -> Iterator[None]:
    import os

    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """unet and segresnet x seeds 0, 1 trained on 6 demo cases; 4 more held out in imagesTs,
    then scored with ``runner evaluate MATRIX``."""
    root = tmp_path_factory.mktemp("predict")
    data = ensure_demo_dataset(root / "demo", cases=10, size=24, seed=0)
    hold_out(data, TEST_CASES)
    uri = f"sqlite:///{root / 'mlruns.db'}"
    path = root / "m.yaml"
    axes = "  model: [unet, segresnet]\n  seed: [0, 1]"
    extra = ["++data.test=imagesTs"]
    path.write_text(matrix_text("tt", data, axes, "{kind: debug}", uri, extra))
    with cwd(root):
        assert main(["sweep", str(path)]) == 0
        assert main(["evaluate", str(path)]) == 0
    return root, path, uri


def _dice(pred: Path, ref: Path) -> float:
    p = torch.from_numpy(np.asarray(nib.load(pred).dataobj) == 1)[None, None]
    r = torch.from_numpy(np.asarray(nib.load(ref).dataobj) == 1)[None, None]
    return float(DiceMetric(include_background=True, ignore_empty=False)(p, r)[0, 0])


def test_evaluate_logs_test_metrics_into_each_cells_run(demo: tuple[Path, Path, str]) -> None:
    root, path, uri = demo
    with cwd(root):
        plan = make_plan(path)
    client = MlflowClient(tracking_uri=uri)
    states = plan.states()
    for cell in plan.cells:
        folder = plan.ledger.cell(cell.id).dir / "test"
        summary = json.loads((folder / "summary.json").read_text())
        assert [c["case"] for c in summary["metric_per_case"]] == TEST_CASES
        assert summary["cell"]["run_name"] == cell.run_name
        for entry in summary["metric_per_case"]:
            pred, ref = Path(entry["prediction_file"]), Path(entry["reference_file"])
            assert pred.parent == folder / "predictions" and ref.parent.name == "labelsTs"
            assert np.allclose(nib.load(pred).affine, nib.load(ref).affine, atol=1e-5)
            metrics = entry["metrics"]["1"]
            if metrics["n_ref"] and metrics["n_pred"]:
                assert metrics["Dice"] == pytest.approx(_dice(pred, ref), rel=1e-5)
        run = client.get_run(states[cell.id].run_id)
        assert run.data.metrics["test_dice"] == pytest.approx(summary["foreground_mean"]["Dice"])
        assert run.data.metrics["test_dice_lesion"] == pytest.approx(summary["mean"]["1"]["Dice"])
        assert run.data.metrics["test_cases"] == 4
        assert run.data.tags["runner.test.checkpoint"] == "best"
        logged = {a.path for a in client.list_artifacts(states[cell.id].run_id, "test")}
        assert "test/summary.json" in logged


def test_a_test_case_seen_in_training_is_refused(demo: tuple[Path, Path, str]) -> None:
    root, path, _ = demo
    with cwd(root):
        plan = make_plan(path)
        cell = find_cell(plan, "unet_s0")
        cfg = plan.recipe.compose([*plan.matrix.spec.base, *cell.overrides])
        cfg.data.test = ["demo_000"]  # a training (or validation) case of this cell
        member = Member(cell, ModelRef(cfg, checkpoint(plan, cell, "best"), cell.run_name))
        with pytest.raises(RunnerError, match="trained or validated on test cases demo_000"):
            evaluate_cells(plan, [member], tta=False, which="best", say=print)


def _per_case(plan, model: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    by_case: dict[str, list[float]] = {}
    for cell in plan.cells:
        if cell.values["model"] != model:
            continue
        summary = json.loads((plan.ledger.cell(cell.id).dir / "test/summary.json").read_text())
        for entry in summary["metric_per_case"]:
            dice = entry["metrics"]["1"]["Dice"]
            if dice == dice:  # not NaN
                by_case.setdefault(entry["case"], []).append(dice)
    return {case: statistics.fmean(v) for case, v in by_case.items()}


def test_report_compares_groups_on_the_test_cases(
    demo: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, path, uri = demo
    args = ["report", str(path), "--format", "json", "--no-mlflow", "-o", str(tmp_path)]
    with cwd(root):
        assert main([*args, "--baseline", "unet"]) == 0
        plan = make_plan(path)
    report = json.loads(capsys.readouterr().out.split("\nreport files in")[0])
    groups = {g["group"]: g for g in report["groups"]}
    seg, unet = _per_case(plan, "segresnet"), _per_case(plan, "unet")
    common = sorted(set(seg) & set(unet))
    d = np.array([seg[c] - unet[c] for c in common])
    row = groups["segresnet"]
    assert row["vs_baseline_n_cases"] == len(common)
    assert row["vs_baseline_delta"] == pytest.approx(d.mean())
    if np.any(d != 0) and not np.all(d == d[0]):
        assert row["vs_baseline_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
        ci = stats.bootstrap((d,), np.mean, rng=np.random.default_rng(0)).confidence_interval
        assert (row["vs_baseline_ci_low"], row["vs_baseline_ci_high"]) == pytest.approx(
            (ci.low, ci.high)
        )
    assert row["vs_baseline_p_holm"] == pytest.approx(row["vs_baseline_p"])  # one comparison
    assert row["vs_baseline_holds"] == (row["vs_baseline_p_holm"] < 0.05)
    client = MlflowClient(tracking_uri=uri)
    states = plan.states()
    test_dice = [
        client.get_run(states[c.id].run_id).data.metrics["test_dice"]
        for c in plan.cells
        if c.values["model"] == "segresnet"
    ]
    assert row["test_dice_mean"] == pytest.approx(statistics.fmean(test_dice))
    low, high = stats.t.interval(0.95, 1, loc=np.mean(test_dice), scale=stats.sem(test_dice))
    clipped = (max(low, 0.0), min(high, 1.0))  # a Dice's range; 2 seeds: marked too few
    assert (row["test_dice_ci_low"], row["test_dice_ci_high"]) == pytest.approx(clipped)
    assert row["test_dice_ci_note"] == "n=2 < 3: too few to compare"
    assert report["ranked_by"].startswith("best val Dice")
    assert [g["group"] for g in report["groups"]] == sorted(
        groups, key=lambda g: -groups[g]["dice_mean"]
    )  # ranked on validation, never on test
    (per_class,) = report["per_class_vs_baseline"]
    assert per_class["source"] == "test" and per_class["class"] == "lesion"
    assert (tmp_path / "per_class_vs_baseline.png").read_bytes()[:4] == b"\x89PNG"

    csv = tmp_path / "baseline_per_class_stats.csv"  # the SegTHOR group's format
    csv.write_text("class,dice_mean,dice_std,hd95_mean\n0,0.99,0.001,1.0\n1,0.3,0.05,9.0\n")
    with cwd(root):
        assert (
            main([*args[:2], "--baseline-csv", str(csv), "--no-mlflow", "-o", str(tmp_path)]) == 0
        )
        out = capsys.readouterr().out
        assert "a CSV holds no cases" in out and "lesion" in out
        rows = json.loads((tmp_path / "report.json").read_text())["per_class_vs_baseline"]
        assert {r["group"] for r in rows} == {"unet", "segresnet"}
        for r in rows:
            assert r["baseline_mean"] == 0.3 and r["delta"] == pytest.approx(r["mean"] - 0.3)
        csv.write_text("class,dice_mean\nlesoin,0.3\n")
        assert main([*args[:2], "--baseline-csv", str(csv), "--no-mlflow"]) == 2
        assert "did you mean 'lesion'?" in capsys.readouterr().err


def _inputs(data: Path, folder: Path, cases: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for c in (0, 1):
            shutil.copy(data / "imagesTs" / f"{case}_{c:04d}.nii.gz", folder)
    return folder


def test_an_ensemble_is_the_mean_of_its_members_probabilities(
    demo: tuple[Path, Path, str], tmp_path: Path
) -> None:
    root, path, _ = demo
    inputs = _inputs(root / "demo", tmp_path / "in", ["demo_006", "demo_007"])
    common = ["-i", str(inputs), "--save-probabilities"]
    with cwd(root):
        assert (
            main(["predict", str(path), "--cell", "unet_s0", "-o", str(tmp_path / "a"), *common])
            == 0
        )
        assert (
            main(["predict", str(path), "--cell", "unet_s1", "-o", str(tmp_path / "b"), *common])
            == 0
        )
        ens = ["--best", "unet", "--ensemble", "seeds", "-o", str(tmp_path / "e")]
        assert main(["predict", str(path), *ens, *common]) == 0
    record = json.loads((tmp_path / "e" / "predict.json").read_text())
    assert sorted(m["name"] for m in record["models"]) == ["unet_s0", "unet_s1"]
    for case in ("demo_006", "demo_007"):
        a, b, e = (np.load(tmp_path / x / f"{case}.npz")["probabilities"] for x in "abe")
        np.testing.assert_allclose(e, (a + b) / 2, atol=1e-6)
        label = nib.load(tmp_path / "e" / f"{case}.nii.gz")
        np.testing.assert_array_equal(np.asarray(label.dataobj), e.argmax(0))
        source = nib.load(inputs / f"{case}_0000.nii.gz")
        assert label.shape == source.shape and np.allclose(label.affine, source.affine, atol=1e-5)


def test_an_ensemble_of_cells_averages_different_architectures(
    demo: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """--ensemble cells: unet and segresnet in one ensemble (the EM group's Phase 3); with
    --best, the best cell of every group (by the selection, val Dice here)."""
    root, path, _ = demo
    inputs = _inputs(root / "demo", tmp_path / "in", ["demo_006"])
    common = ["-i", str(inputs), "--save-probabilities"]
    with cwd(root):
        for cell in ("unet_s1", "segresnet_s0"):
            assert (
                main(["predict", str(path), "--cell", cell, "-o", str(tmp_path / cell), *common])
                == 0
            )
        cells = ["--ensemble", "cells", "--cells", "unet_s1,segresnet_s0"]
        assert main(["predict", str(path), *cells, "-o", str(tmp_path / "e"), *common]) == 0
        best = ["--ensemble", "cells", "--best", "-o", str(tmp_path / "b")]
        assert main(["predict", str(path), *best, *common]) == 0
        with pytest.raises(SystemExit):  # --cells and --cell are one choice
            main(["predict", str(path), "--cell", "unet_s0", "--cells", "unet_s1", *common])
    a, b, e = (
        np.load(tmp_path / x / "demo_006.npz")["probabilities"]
        for x in ("unet_s1", "segresnet_s0", "e")
    )
    np.testing.assert_allclose(e, (a + b) / 2, atol=1e-6)
    record = json.loads((tmp_path / "b" / "predict.json").read_text())
    names = sorted(m["name"] for m in record["models"])
    assert [n.split("_")[0] for n in names] == ["segresnet", "unet"]  # one of each group
    plan = make_plan(path, workdir=root)
    states = plan.states()
    for name in names:
        group = [c for c in plan.cells if c.run_name.split("_")[0] == name.split("_")[0]]
        dices = [states[c.id].best_val_dice for c in group]
        assert states[find_cell(plan, name).id].best_val_dice == max(dices)


def test_bad_inputs_are_one_clear_error_and_write_nothing(
    demo: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, path, _ = demo
    inputs = _inputs(root / "demo", tmp_path / "in", ["demo_006", "demo_007"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "demo_006.nii.gz").write_bytes(b"an earlier result")

    def predict(*extra: str) -> str:
        with cwd(root):
            code = main(["predict", str(path), "-i", str(inputs), "-o", str(out), *extra])
        assert code == 2
        assert sorted(p.name for p in out.iterdir()) == ["demo_006.nii.gz"]
        assert (out / "demo_006.nii.gz").read_bytes() == b"an earlier result"
        return capsys.readouterr().err

    (inputs / "demo_007_0001.nii.gz").unlink()
    err = predict("--cell", "unet_s0")
    assert "demo_007_0001.nii.gz is missing" in err and "_0000 (CBF), _0001 (TMAX)" in err
    shutil.copy(inputs / "demo_006_0000.nii.gz", inputs / "demo_007_0001.nii.gz")
    shutil.copy(inputs / "demo_006_0000.nii.gz", inputs / "demo_006_0002.nii.gz")
    err = predict("--cell", "unet_s0")
    assert "case demo_006 has 3 channel files" in err and "2 channels: _0000 (CBF)" in err
    (inputs / "demo_006_0002.nii.gz").unlink()
    both = nib.load(inputs / "demo_006_0000.nii.gz")
    four_d = np.stack([np.asarray(both.dataobj)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(four_d, both.affine), inputs / "demo_006_0000.nii.gz")
    err = predict("--cell", "unet_s0")
    assert "demo_006_0000.nii.gz holds 2 channels" in err and "one channel per file" in err
    err = predict("--cell", "unet_s9")
    assert "no cell 'unet_s9'" in err and "did you mean 'unet_s" in err
    assert "run names: segresnet_s0, segresnet_s1, unet_s0, unet_s1" in err
    err = predict("--best", "unet", "--ensemble", "folds")
    assert "no 'data.fold' axis" in err and "model, seed" in err
    err = predict("--cell", "unet_s0", "--ensemble", "cells")
    assert "--ensemble cells: name its members with --cells A,B,..." in err
    err = predict("--cell", "unet_s0", "--set", "predict.sw_overlp=0.7")
    assert "did you mean 'predict.sw_overlap'?" in err


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A UNet trained on the real T1 volume and two mirrors, resampled to 4 mm, in RAS."""
    _ensure_package()
    root = tmp_path_factory.mktemp("real_predict")
    data = root / "Dataset001_T1"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
    image, labels = nib.load(DATA / IMAGE), nib.load(DATA / LABELS)
    t1 = np.asarray(image.dataobj).astype(np.float32)
    kmeans = np.asarray(labels.dataobj)
    tissue = np.select([kmeans >= 4, kmeans >= 2], [2, 1], 0).astype(np.uint8)
    for i, flip in enumerate([(), (0,), (1,)]):
        img, lab = (np.ascontiguousarray(np.flip(a, flip) if flip else a) for a in (t1, tissue))
        nib.save(nib.Nifti1Image(img, image.affine), data / "imagesTr" / f"t1_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, image.affine), data / "labelsTr" / f"t1_{i:03d}.nii.gz")
    meta = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "dark": 1, "bright": 2},
        "file_ending": ".nii.gz",
        "numTraining": 3,
    }
    (data / "dataset.json").write_text(json.dumps(meta))
    uri = f"sqlite:///{root / 'mlruns.db'}"
    path = root / "real.yaml"
    extra = [
        "data.synthetic=false",
        "data.in_channels=1",
        "data.num_classes=3",
        "data.normalize_nonzero=false",
        "data.spacing=[4.0,4.0,4.0]",
    ]
    path.write_text(matrix_text("real_t1", data, "  model: [unet]", "{kind: debug}", uri, extra))
    with cwd(root):
        assert main(["sweep", str(path)]) == 0
    return root, path


def test_predictions_land_on_each_inputs_grid(real: tuple[Path, Path], tmp_path: Path) -> None:
    """The original (LSA, 2x2x3 mm), its RAS reorientation and a crop with another origin:
    each prediction has its input's shape and affine, and the first two agree voxel for
    voxel once reoriented (the same anatomy gives the same labels whatever the storage)."""
    root, path = real
    src = nib.load(DATA / IMAGE)
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(src, inputs / "lsa_0000.nii.gz")
    nib.save(nib.as_closest_canonical(src), inputs / "ras_0000.nii.gz")
    nib.save(src.slicer[10:110, 5:120, 3:60], inputs / "crop_0000.nii.gz")
    out = tmp_path / "out"
    with cwd(root):
        args = ["predict", str(path), "--cell", "unet", "-i", str(inputs), "-o", str(out)]
        assert main([*args, "--save-probabilities", "--set", "predict.sw_batch_size=8"]) == 0
        plan = make_plan(path)
        cell = plan.cells[0]
        cfg = plan.recipe.compose([*plan.matrix.spec.base, *cell.overrides])
    for case in ("lsa", "ras", "crop"):
        given, got = nib.load(inputs / f"{case}_0000.nii.gz"), nib.load(out / f"{case}.nii.gz")
        assert got.shape == given.shape
        np.testing.assert_allclose(got.affine, given.affine, atol=1e-5)
        assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(given.affine)
    assert nib.aff2axcodes(src.affine) == ("L", "S", "A")  # the test means something
    to_ras = nib.orientations.io_orientation(src.affine)
    lsa = np.load(out / "lsa.npz")["probabilities"]
    lsa_as_ras = np.stack([nib.orientations.apply_orientation(p, to_ras) for p in lsa])
    ras = np.load(out / "ras.npz")["probabilities"]
    assert ras.std(axis=(1, 2, 3)).min() > 0.01  # a map that varies, so agreement means much
    np.testing.assert_allclose(lsa_as_ras, ras, atol=1e-4)

    # The recipe on its own (its CLI, the cell's config saved as a run logs it): same labels.
    from recipes.segmentation.predict import main as predict_main

    OmegaConf.save(cfg, tmp_path / "config.yaml")
    ckpt = plan.ledger.cell(cell.id).checkpoint_dir / "best.pt"
    alone = tmp_path / "alone"
    with cwd(root):
        assert (
            predict_main(
                [
                    "-i",
                    str(inputs),
                    "-o",
                    str(alone),
                    "-c",
                    str(ckpt),
                    "--config",
                    str(tmp_path / "config.yaml"),
                ]
            )
            == 0
        )
    for case in ("lsa", "ras", "crop"):
        np.testing.assert_array_equal(
            np.asarray(nib.load(alone / f"{case}.nii.gz").dataobj),
            np.asarray(nib.load(out / f"{case}.nii.gz").dataobj),
        )
