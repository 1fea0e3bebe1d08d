"""``runner evaluate --pred --labels`` on real NIfTI label maps (Debian's ITK example: a k-means
tissue map of a T1 brain, 128x128x62 voxels at 2x2x3 mm): every figure equals MONAI's
metrics computed here independently with the same spacing; empty classes follow nnU-Net and
the file says so; ``summary.json`` has nnU-Net's keys; bad input is one clear error that
leaves an earlier summary alone. Also ``data.test``: which cases it holds out."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDiceMetric
from monai.networks.utils import one_hot
from omegaconf import OmegaConf

from recipes.components.testtime.held_out import exclude_test, held_out_items
from recipes.contract import PredictInputError
from runner.cli import main
from tests import datasets
from tests.e2e import hold_out
from tests.test_real_data import DATA, LABELS, _ensure_package

LABEL_NAMES = {"background": 0, "dark": 1, "bright": 2, "vessel": 3}  # vessel: never present


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """labels/ (the real map twice), pred/ (shifted; one with 'bright' missing), dataset.json."""
    _ensure_package()
    root = tmp_path_factory.mktemp("eval")
    src = nib.load(DATA / LABELS)
    kmeans = np.asarray(src.dataobj)
    tissue = np.select([kmeans >= 4, kmeans >= 2], [2, 1], 0).astype(np.uint8)
    preds = {
        "brain_a": np.roll(tissue, 2, axis=0),  # every class present, 2 voxels (4 mm) off
        "brain_b": np.where(tissue == 2, 1, tissue).astype(np.uint8),  # 'bright' never predicted
    }
    for case, pred in preds.items():
        for folder, array in (("labels", tissue), ("pred", pred)):
            (root / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, src.affine), root / folder / f"{case}.nii.gz")
    meta = {"labels": LABEL_NAMES, "file_ending": ".nii.gz", "channel_names": {"0": "T1"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root / "pred", root / "labels", root / "dataset.json"


def _monai(pred: np.ndarray, ref: np.ndarray, spacing: list[float]) -> dict[str, np.ndarray]:
    """Per foreground class (1..3), straight from MONAI's metric classes."""
    p = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], 4)
    r = one_hot(torch.from_numpy(ref.astype(np.int64))[None, None], 4)
    kw = {"include_background": False, "reduction": "none"}
    return {
        "Dice": DiceMetric(ignore_empty=False, **kw)(p, r)[0].numpy(),
        "IoU": MeanIoU(ignore_empty=False, **kw)(p, r)[0].numpy(),
        "HD95": HausdorffDistanceMetric(percentile=95, **kw)(p, r, spacing=spacing)[0].numpy(),
        "NSD": SurfaceDiceMetric([2.0] * 3, **kw)(p, r, spacing=spacing)[0].numpy(),
    }


def test_evaluate_equals_monai_and_writes_nnunet_summary(
    folders: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    pred_dir, labels_dir, dataset_json = folders
    out = tmp_path / "summary.json"
    args = ["evaluate", "--pred", str(pred_dir), "--labels", str(labels_dir)]
    assert main([*args, "--dataset-json", str(dataset_json), "-o", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert {"metric_per_case", "mean", "foreground_mean"} <= set(summary)
    assert "nnU-Net" in summary["empty_classes"]  # the file says how empty classes count
    assert summary["labels"] == {"0": "background", "1": "dark", "2": "bright", "3": "vessel"}
    spacing = [2.0, 2.0, 3.0]
    for entry in summary["metric_per_case"]:
        assert set(entry) >= {"metrics", "prediction_file", "reference_file"}
        assert set(entry["metrics"]) == {"1", "2", "3"}
        pred = np.asarray(nib.load(entry["prediction_file"]).dataobj)
        ref = np.asarray(nib.load(entry["reference_file"]).dataobj)
        assert entry["spacing"] == spacing
        want = _monai(pred, ref, spacing)
        for k, value in enumerate(("1", "2", "3")):
            got = entry["metrics"][value]
            assert got["n_ref"] == int((ref == k + 1).sum())
            assert got["TP"] == int(((ref == k + 1) & (pred == k + 1)).sum())
            if got["n_ref"] and got["n_pred"]:  # both present: MONAI's figures exactly
                for metric in ("Dice", "IoU", "HD95", "NSD"):
                    assert got[metric] == pytest.approx(float(want[metric][k]), rel=1e-5)
            elif got["n_ref"] or got["n_pred"]:  # one side empty: 0, HD95 the diagonal
                assert got["Dice"] == got["IoU"] == got["NSD"] == 0 == want["Dice"][k]
                assert not math.isfinite(want["HD95"][k])  # MONAI: inf or NaN
                diag = float(np.linalg.norm(np.array(ref.shape) * spacing))
                assert got["HD95"] == pytest.approx(diag)
            else:  # empty in both: nnU-Net's NaN (MONAI would say 1 with ignore_empty=False)
                assert all(math.isnan(got[m]) for m in ("Dice", "IoU", "HD95", "NSD"))
                assert want["Dice"][k] == 1.0
    for value in ("1", "2"):
        per_case = [e["metrics"][value]["Dice"] for e in summary["metric_per_case"]]
        assert summary["mean"][value]["Dice"] == pytest.approx(np.mean(per_case))
    assert math.isnan(summary["mean"]["3"]["Dice"])  # never present: nothing to average
    assert math.isnan(summary["foreground_mean"]["Dice"])  # nnU-Net: the mean of the means
    assert summary["metric_per_case"][1]["metrics"]["2"]["Dice"] == 0  # missed 'bright'


def test_evaluate_without_dataset_json_and_its_errors(
    folders: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred_dir, labels_dir, _ = folders
    out = tmp_path / "summary.json"
    args = ["evaluate", "--pred", str(pred_dir), "--labels", str(labels_dir), "-o", str(out)]
    assert main(args) == 0
    summary = json.loads(out.read_text())
    assert set(summary["mean"]) == {"1", "2"}  # the values found in the references
    assert not math.isnan(summary["foreground_mean"]["Dice"])
    before = out.read_text()
    capsys.readouterr()

    partial = tmp_path / "partial"
    shutil.copytree(pred_dir, partial)
    (partial / "brain_b.nii.gz").unlink()
    args = ["evaluate", "--pred", str(partial), "--labels", str(labels_dir), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "brain_b.nii.gz" in err and "1 of 2 references have no prediction" in err
    assert "brain_a.nii.gz" in err  # what is there
    assert out.read_text() == before  # a failed evaluate leaves the earlier summary alone

    src = nib.load(pred_dir / "brain_b.nii.gz")
    cropped = np.asarray(src.dataobj)[:100]
    nib.save(nib.Nifti1Image(cropped, src.affine), partial / "brain_b.nii.gz")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "(100, 128, 62)" in err and "(128, 128, 62)" in err and "grid" in err
    assert main(["evaluate", "--pred", str(pred_dir)]) == 2
    assert "--labels" in capsys.readouterr().err


def test_data_test_holds_out_ids_fractions_and_folders(tmp_path: Path) -> None:
    root = datasets.nnunet(tmp_path / "demo", cases=6, size=16)
    ids = [f"demo_{i:03d}" for i in range(6)]

    def cfg(test: object) -> object:
        return OmegaConf.create(
            {"root": str(root), "format": "auto", "split_seed": 0, "test": test}
        )

    items = [{"case": c} for c in ids]
    assert exclude_test(items, cfg(None)) == items
    kept = [i["case"] for i in exclude_test(items, cfg(["demo_001", "demo_004"]))]
    assert kept == ["demo_000", "demo_002", "demo_003", "demo_005"]
    assert [i["case"] for i in held_out_items(cfg(["demo_004", "demo_001"]))] == [
        "demo_001",
        "demo_004",
    ]
    frac = [i["case"] for i in held_out_items(cfg(0.34))]
    assert len(frac) == 2 and frac == [i["case"] for i in held_out_items(cfg(0.34))]  # stable
    assert not set(frac) & {i["case"] for i in exclude_test(items, cfg(0.34))}
    with pytest.raises(PredictInputError, match="did you mean 'demo_004'"):
        held_out_items(cfg(["demo_04"]))
    with pytest.raises(PredictInputError, match=r"data\.test is not set"):
        held_out_items(cfg(None))
    with pytest.raises(PredictInputError, match="imagesTs is not a directory"):
        held_out_items(cfg("imagesTs"))
    hold_out(root, {"demo_005": "new"}, copy=True)
    held = held_out_items(cfg("imagesTs"))
    assert [i["case"] for i in held] == ["new"] and len(held[0]["image"]) == 2
    assert exclude_test(items, cfg("imagesTs")) == items  # other folders: nothing to drop
    shutil.copy(root / "labelsTr" / "demo_005.nii.gz", root / "labelsTs" / "demo_000.nii.gz")
    with pytest.raises(PredictInputError, match="also training cases"):
        exclude_test(items, cfg("imagesTs"))
