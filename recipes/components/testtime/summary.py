"""Score label maps against references and write nnU-Net's ``summary.json``.

Per case and foreground class: Dice, IoU (nnU-Net's formulas from its counts TP, FP, FN, TN,
n_pred, n_ref), HD95 (mm) and normalised surface Dice at ``tolerance_mm`` (MONAI's
``compute_hausdorff_distance`` at the 95th percentile and ``compute_surface_dice``, with the
voxel spacing of each reference's header), every one by the rule of
``training/case_metrics.py``, the one validation uses too. The file has nnU-Net's keys:
``metric_per_case`` (one entry per case: ``metrics`` by label value, ``prediction_file``,
``reference_file``), ``mean`` (per label value, the mean over cases ignoring NaN) and
``foreground_mean`` (nnU-Net's mean of the class means: NaN if a class has no case to score),
plus ``over_classes`` (the mean over the classes that have one: what ``val_dice`` and
``test_dice`` are), and says how empty classes are scored (:data:`EMPTY_POLICY`), which labels
it scored and with which tolerance.

Without a dataset.json the labels are every value found in the references **and** the
predictions: a class only ever predicted scores 0 where it is predicted (nnU-Net would need
its label list); ``warnings`` names such classes.

Predictions and references are NIfTI files or EM stacks (HDF5 / TIFF), paired by folder or
by glob patterns, a mask restricting the scored voxels (``pairs.py``); ``instances``
(``task=em_instance``) scores instance segmentations instead (``instance_summary.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipes.components.testtime.instance_summary import evaluate_instances
from recipes.components.testtime.pairs import load_nifti_label_map, load_pair, pairs_of
from recipes.components.training.case_metrics import (
    METRIC_RULES,
    class_means,
    counts,
    distances,
    mean_over_classes,
    overlap,
)
from recipes.contract import EvaluateRequest, PredictInputError

METRICS = ("Dice", "IoU", "HD95", "NSD", "TP", "FP", "FN", "TN", "n_pred", "n_ref")
EMPTY_POLICY = (
    METRIC_RULES + ". foreground_mean is nnU-Net's mean of the class means (NaN if a class "
    "has no case to score); over_classes leaves such a class out."
)


def _labels_from_json(path: Path) -> tuple[dict[int, str], str, int | None]:
    """(value -> name, file ending, ignore label) from an nnU-Net v2 or MSD dataset.json."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PredictInputError(f"--dataset-json {path}: cannot be read ({err})") from None
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise PredictInputError(f"--dataset-json {path}: no 'labels' mapping")
    ignore = labels.get("ignore")
    if all(isinstance(v, int) for v in labels.values()):  # nnU-Net v2: {name: value}
        by_value = {int(v): str(k) for k, v in labels.items() if k != "ignore"}
    elif all(str(k).isdigit() for k in labels):  # MSD: {"value": name}
        by_value = {int(k): str(v) for k, v in labels.items()}
    else:
        raise PredictInputError(
            f"--dataset-json {path}: labels must map names to values (nnU-Net v2) or values "
            "to names (MSD); region-based labels are not supported"
        )
    return by_value, str(meta.get("file_ending", ".nii.gz")), ignore


def load_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label file's values (int64) and voxel spacing (mm, array-axis order)."""
    data, _, spacing = load_nifti_label_map(path)
    return data, spacing


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    values: list[int],
    tolerance_mm: float,
    ignore: int | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Every metric of every foreground label value for one case (see the module doc);
    voxels of the ``ignore`` label or outside ``mask`` count nowhere."""
    keep_np = ref != ignore if ignore is not None else None
    if mask is not None:
        keep_np = mask if keep_np is None else keep_np & mask
    keep = torch.from_numpy(keep_np) if keep_np is not None else None
    total = int(keep.sum()) if keep is not None else int(pred.size)
    pred_t, ref_t = torch.from_numpy(pred), torch.from_numpy(ref)
    out: dict[str, dict[str, float]] = {}
    for value in values:
        p, r = pred_t == value, ref_t == value
        if keep is not None:  # nnU-Net's ignore label: those voxels count nowhere
            p, r = p & keep, r & keep
        tp, fp, fn = counts(p, r)
        dice, iou = overlap(tp, fp, fn)
        hd95, nsd = distances(p, r, spacing, nsd_tolerance_mm=tolerance_mm)
        out[str(value)] = {
            "Dice": dice,
            "IoU": iou,
            "HD95": hd95,
            "NSD": nsd,
            "TP": tp,
            "FP": fp,
            "FN": fn,
            "TN": total - tp - fp - fn,
            "n_pred": tp + fp,
            "n_ref": tp + fn,
        }
    return out


def evaluate(request: EvaluateRequest) -> dict[str, Any]:
    """nnU-Net's ``summary.json`` content for ``request`` (see the module doc)."""
    labels, ending, ignore = request.labels, request.file_ending, None
    if request.dataset_json is not None:
        from_json, ending, ignore = _labels_from_json(request.dataset_json)
        labels = labels or from_json
    pairs = pairs_of(request, ending)
    if request.instances:
        return evaluate_instances(pairs, request)
    loaded = [(pair, *load_pair(pair, request)) for pair in pairs]
    warnings: list[str] = []
    if labels is None:
        found = [(pair.case, None, None, pred, ref) for pair, pred, ref, *_ in loaded]
        labels, warnings = _labels_found(found, ignore)
    values = sorted(v for v in labels if v != 0 and v != ignore)
    per_case = []
    for pair, pred, ref, mask, spacing in loaded:
        tolerance = request.tolerance_mm
        per_case.append(
            {
                "case": pair.case,
                "metrics": score_case(pred, ref, spacing, values, tolerance, ignore, mask),
                "prediction_file": str(pair.prediction),
                "reference_file": str(pair.reference),
                **({"mask_file": str(pair.mask)} if pair.mask else {}),
                "spacing": list(spacing),
            }
        )
    table = {
        m: np.asarray([[c["metrics"][str(v)][m] for v in values] for c in per_case], float)
        for m in METRICS
    }
    by_class = {m: class_means(table[m].reshape(len(per_case), len(values))) for m in METRICS}
    mean = {str(v): {m: float(by_class[m][i]) for m in METRICS} for i, v in enumerate(values)}
    foreground_mean = {m: float(np.mean(by_class[m])) if values else math.nan for m in METRICS}
    return {
        "foreground_mean": foreground_mean,
        "over_classes": {m: mean_over_classes(by_class[m]) for m in METRICS},
        "mean": mean,
        "metric_per_case": per_case,
        "labels": {str(v): labels[v] for v in sorted(labels)},
        "ignore_label": ignore,
        "nsd_tolerance_mm": request.tolerance_mm,
        "spacing": "each reference's NIfTI header (mm); stacks: data.voxel_size (nm) in mm, "
        "else 1 per voxel",
        "empty_classes": EMPTY_POLICY,
        "n_cases": len(per_case),
        "warnings": warnings,
    }


def _labels_found(loaded: list[Any], ignore: int | None) -> tuple[dict[int, str], list[str]]:
    """Without a label list: every value in the references and the predictions, and a
    warning naming the values only predictions have (scored, never skipped)."""
    in_refs = set().union(*(np.unique(c[4]).tolist() for c in loaded)) | {0}
    in_preds = set().union(*(np.unique(c[3]).tolist() for c in loaded))
    only_pred = sorted(v for v in in_preds - in_refs if v != ignore)
    warnings = []
    if only_pred:
        cases = sorted(c[0] for c in loaded if set(np.unique(c[3]).tolist()) & set(only_pred))
        warnings.append(
            f"label value(s) {', '.join(map(str, only_pred))} appear only in predictions "
            f"({', '.join(cases[:5])}{' ...' if len(cases) > 5 else ''}): scored 0 where "
            "predicted (false positives), NaN elsewhere; pass --dataset-json to name the "
            "classes"
        )
    return {int(v): str(v) for v in sorted(in_refs | set(only_pred))}, warnings
