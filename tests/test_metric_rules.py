"""One definition of Dice, HD95 and surface Dice everywhere: the same cases scored through
validation (the recipes' ``evaluate``), ``runner evaluate`` (NIfTI files, summary.json) and
nnU-Net's formulas written out here give the same figures, where MONAI's default
(``ignore_empty=True``) would not; the EM recipe's foreground Dice follows the same rule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from omegaconf import OmegaConf
from torch import nn

from recipes.components.training.instances import InstanceMetrics, instance_scores
from recipes.components.training.validation import evaluate as validate
from runner.cli import main

SPACING = (0.8, 1.1, 2.5)
SHAPE = (20, 18, 12)


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(prediction, reference) label maps: the four situations of the metric audit."""
    out = {}
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:10, 2:10, 2:8], ref[12:18, 8:16, 3:9] = 1, 2
    pred = np.roll(ref, 1, axis=0)  # A: both classes, imperfect
    out["a"] = pred, ref.copy()
    ref_b = np.where(ref == 2, 0, ref).astype(np.uint8)
    out["b"] = pred.copy(), ref_b  # B: class 2 predicted where the truth has none
    out["c"] = np.where(pred == 2, 0, pred).astype(np.uint8), ref_b.copy()  # C: 2 in neither
    blob = np.zeros(SHAPE, np.uint8)
    blob[5:8, 5:8, 5:8] = 1
    out["d"] = blob, np.zeros(SHAPE, np.uint8)  # D: a lesion-free case with a false blob
    return out


def _nnunet(cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's evaluator, written out: per case and class TP/FP/FN, Dice NaN when the class
    is in neither, 0 when in one; per class the nanmean over cases. (cases x 2, 2)."""
    per_case = []
    for pred, ref in cases.values():
        row = []
        for c in (1, 2):
            p, r = pred == c, ref == c
            tp, fp, fn = np.sum(p & r), np.sum(p & ~r), np.sum(~p & r)
            row.append(np.nan if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        per_case.append(row)
    table = np.asarray(per_case, float)
    return table, np.nanmean(table, axis=0)


def _affine() -> np.ndarray:
    return np.diag([*SPACING, 1.0])


def _through_validation(cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Any, Any]:
    """The recipes' validation ``evaluate`` on these volumes: the 'network' returns logits
    whose argmax is the prediction; spacing comes from the images' metadata, as in training."""
    batches = []
    for pred, ref in cases.values():
        logits = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], 3) * 10.0
        image = MetaTensor(logits, affine=torch.from_numpy(_affine()))
        label = MetaTensor(torch.from_numpy(ref.astype(np.int64))[None, None])
        batches.append({"image": image, "label": label})
    cfg = OmegaConf.create(
        {
            "data": {"num_classes": 3},
            "training": {
                "amp": "fp32",
                "metrics": {"hd95": True, "surface_dice": True, "surface_tolerance_mm": 2.0},
            },
        }
    )
    return validate(nn.Identity(), batches, torch.device("cpu"), cfg, SimpleInferer())


def _through_evaluate(cases: dict[str, tuple[np.ndarray, np.ndarray]], root: Path) -> dict:
    for case, (pred, ref) in cases.items():
        for folder, array in (("pred", pred), ("labels", ref)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, _affine()), root / folder / f"{case}.nii.gz")
    meta = {"labels": {"background": 0, "one": 1, "two": 2}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    args = ["evaluate", "--pred", str(root / "pred"), "--labels", str(root / "labels")]
    assert main([*args, "--dataset-json", str(root / "dataset.json")]) == 0
    return json.loads((root / "pred" / "summary.json").read_text())


def test_validation_evaluate_and_nnunet_agree_on_the_same_cases(tmp_path: Path) -> None:
    cases = _cases()
    table, class_means = _nnunet(cases)
    dice, extra = _through_validation(cases)
    summary = _through_evaluate(cases, tmp_path)
    # per class: validation = evaluate = nnU-Net
    assert dice.tolist() == pytest.approx(class_means.tolist(), abs=1e-6)
    for k, value in enumerate(("1", "2")):
        assert summary["mean"][value]["Dice"] == pytest.approx(class_means[k], abs=1e-12)
        per_case = [e["metrics"][value]["Dice"] for e in summary["metric_per_case"]]
        assert np.allclose(per_case, table[:, k], equal_nan=True, atol=1e-12)
    # overall: val_dice (the recipes' nanmean over classes) = evaluate's = nnU-Net's
    overall = float(np.mean(class_means))
    assert float(torch.nanmean(dice)) == pytest.approx(overall, abs=1e-6)
    assert summary["over_classes"]["Dice"] == pytest.approx(overall, abs=1e-12)
    assert summary["foreground_mean"]["Dice"] == pytest.approx(overall, abs=1e-12)
    # the false positives of B (class 2) and D (class 1) count: 0, not dropped
    assert table[1, 1] == 0 and table[3, 0] == 0 and math.isnan(table[2, 1])
    # MONAI's default would have dropped them: a different, higher figure
    monai_default = DiceMetric(include_background=False, reduction="mean_batch")
    for pred, ref in cases.values():
        p = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], 3)
        monai_default(p, one_hot(torch.from_numpy(ref.astype(np.int64))[None, None], 3))
    assert float(torch.nanmean(monai_default.aggregate())) > overall + 0.15
    # distances: one rule too (one side empty: the diagonal; both: left out)
    diagonal = float(np.linalg.norm(np.asarray(SHAPE) * SPACING))
    b2 = summary["metric_per_case"][1]["metrics"]["2"]
    assert b2["HD95"] == pytest.approx(diagonal) and b2["NSD"] == 0
    assert math.isnan(summary["metric_per_case"][2]["metrics"]["2"]["HD95"])
    assert extra["val_hd95"] == pytest.approx(summary["over_classes"]["HD95"], rel=1e-6)
    assert extra["val_surface_dice"] == pytest.approx(summary["over_classes"]["NSD"], rel=1e-6)
    assert summary["over_classes"]["HD95"] > diagonal / 4  # the diagonals are in the mean


def test_a_class_only_predicted_is_scored_without_a_dataset_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:10, 2:10, 2:8] = 1
    pred = ref.copy()
    pred[12:16, 12:16, 2:6] = 4  # a class the references never have
    for folder, array in (("pred", pred), ("labels", ref)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(array, _affine()), tmp_path / folder / "x.nii.gz")
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--labels", str(tmp_path / "labels")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "4"}
    assert summary["mean"]["4"]["Dice"] == 0 and summary["mean"]["1"]["Dice"] == 1
    assert summary["over_classes"]["Dice"] == 0.5  # not 1.0: the hallucination counts
    out = capsys.readouterr().out
    assert "warning: label value(s) 4 appear only in predictions (x)" in out
    assert summary["warnings"] and "--dataset-json" in summary["warnings"][0]


def test_em_foreground_dice_follows_the_rule() -> None:
    truth = np.zeros((8, 8, 4), np.int64)
    truth[1:4, 1:4] = 1
    assert math.isnan(instance_scores(np.zeros_like(truth), np.zeros_like(truth))["dice_fg"])
    assert instance_scores(truth, np.zeros_like(truth))["dice_fg"] == 0
    metrics = InstanceMetrics()
    metrics.scores = [instance_scores(truth, truth), instance_scores(truth * 0, truth * 0)]
    dice, _ = metrics.aggregate()
    assert float(dice[0]) == 1.0  # the empty-vs-empty volume is left out, not counted as 1
