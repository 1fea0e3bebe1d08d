"""Score label maps against references and write nnU-Net's ``summary.json``.

Per case and foreground class: Dice, IoU, HD95 (mm) and normalised surface Dice at
``tolerance_mm`` (MONAI's ``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric`` at the 95th
percentile and ``SurfaceDiceMetric``, with the voxel spacing of each reference's header), plus
nnU-Net's counts TP, FP, FN, TN, n_pred, n_ref. The file has nnU-Net's keys:
``metric_per_case`` (one entry per case: ``metrics`` by label value, ``prediction_file``,
``reference_file``), ``mean`` (per label value, the mean over cases ignoring NaN) and
``foreground_mean`` (the mean of the class means), and says how empty classes are scored
(:data:`EMPTY_POLICY`), which labels it scored and with which tolerance.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDiceMetric

from recipes.contract import EvaluateRequest, PredictInputError

METRICS = ("Dice", "IoU", "HD95", "NSD", "TP", "FP", "FN", "TN", "n_pred", "n_ref")
EMPTY_POLICY = (
    "as nnU-Net: a class absent from both the reference and the prediction of a case has "
    "Dice, IoU, HD95 and NSD NaN for that case and is left out of that class's mean "
    "(nanmean); absent from one of them only: Dice, IoU and NSD 0, HD95 the image's diagonal "
    "in mm (the largest distance possible, so a missed or hallucinated class is penalised "
    "rather than dropped). foreground_mean is the mean of the class means (NaN if a class "
    "has no case to score)."
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


def _pair_folders(pred_dir: Path, labels_dir: Path, ending: str) -> list[tuple[str, Path, Path]]:
    """nnU-Net's rule: every reference needs a prediction; extra predictions are ignored."""
    for flag, folder in (("--pred", pred_dir), ("--labels", labels_dir)):
        if not folder.is_dir():
            raise PredictInputError(f"{flag} {folder}: not a directory")
    refs = sorted(p for p in labels_dir.glob(f"*{ending}") if not p.name.startswith("."))
    if not refs:
        raise PredictInputError(f"--labels {labels_dir}: no reference files *{ending}")
    missing = [p.name for p in refs if not (pred_dir / p.name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" * (len(missing) > 5))
        found = sorted(p.name for p in pred_dir.glob(f"*{ending}"))[:5]
        raise PredictInputError(
            f"--pred {pred_dir}: {len(missing)} of {len(refs)} references have no prediction "
            f"({shown}); predictions there: {', '.join(found) or 'none'}"
        )
    return [(p.name[: -len(ending)], pred_dir / p.name, p) for p in refs]


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises several types for unreadable files
        raise PredictInputError(f"{path}: cannot be read as NIfTI ({err})") from None
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PredictInputError(f"{path}: a label map must be 3D, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.rint(data).astype(np.int64), np.asarray(img.affine), zooms


def _mask(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)[None, None]


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    values: list[int],
    tolerance_mm: float,
    ignore: int | None = None,
) -> dict[str, dict[str, float]]:
    """Every metric of every foreground label value for one case (see the module doc)."""
    keep = ref != ignore if ignore is not None else None
    diagonal = float(np.linalg.norm(np.asarray(ref.shape) * np.asarray(spacing)))
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    out: dict[str, dict[str, float]] = {}
    for value in values:
        p, r = pred == value, ref == value
        if keep is not None:  # nnU-Net's ignore label: those voxels count nowhere
            p, r = p & keep, r & keep
        tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
        tn = int(keep.sum() if keep is not None else p.size) - tp - fp - fn
        yp, yr = _mask(p), _mask(r)
        nsd = SurfaceDiceMetric([tolerance_mm], include_background=True, reduction="none")
        row = {
            "Dice": float(dice(yp, yr)[0, 0]),
            "IoU": float(iou(yp, yr)[0, 0]),
            "HD95": math.nan,
            "NSD": math.nan,
        }
        if tp + fp + fn == 0:  # empty in both: nnU-Net scores nothing
            row["Dice"] = row["IoU"] = math.nan
        elif tp + fn == 0 or tp + fp == 0:  # one side empty: MONAI gives inf or NaN
            row["HD95"], row["NSD"] = diagonal, 0.0
        else:
            with warnings.catch_warnings():  # MONAI's own use of its deprecated argument
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy")
                row["HD95"] = float(hd95(yp, yr, spacing=list(spacing))[0, 0])
                row["NSD"] = float(nsd(yp, yr, spacing=list(spacing))[0, 0])
        row.update(TP=tp, FP=fp, FN=fn, TN=tn, n_pred=tp + fp, n_ref=tp + fn)
        out[str(value)] = row
    return out


def evaluate(request: EvaluateRequest) -> dict[str, Any]:
    """nnU-Net's ``summary.json`` content for ``request`` (see the module doc)."""
    labels, ending, ignore = request.labels, request.file_ending, None
    if request.dataset_json is not None:
        from_json, ending, ignore = _labels_from_json(request.dataset_json)
        labels = labels or from_json
    if request.pairs is not None:
        pairs = list(request.pairs)
    elif request.pred_dir is not None and request.labels_dir is not None:
        pairs = _pair_folders(request.pred_dir, request.labels_dir, ending)
    else:
        raise PredictInputError("evaluate needs --pred and --labels folders")
    loaded = []
    for case, pred_path, ref_path in pairs:
        pred, pred_affine, _ = _load(pred_path)
        ref, ref_affine, spacing = _load(ref_path)
        if pred.shape != ref.shape:
            raise PredictInputError(
                f"{pred_path} has shape {pred.shape}, its reference {ref_path} {ref.shape}: "
                "a prediction must be on its reference's grid"
            )
        if not np.allclose(pred_affine, ref_affine, atol=1e-3):
            raise PredictInputError(
                f"{pred_path} is not on the grid of its reference {ref_path}: their affines "
                "differ (a prediction must be on its reference's grid)"
            )
        loaded.append((case, pred_path, ref_path, pred, ref, spacing))
    if labels is None:
        found = sorted(set().union(*(np.unique(r).tolist() for *_, r, _ in loaded)) | {0})
        labels = {int(v): str(v) for v in found}
    values = sorted(v for v in labels if v != 0 and v != ignore)
    per_case = []
    for case, pred_path, ref_path, pred, ref, spacing in loaded:
        per_case.append(
            {
                "case": case,
                "metrics": score_case(pred, ref, spacing, values, request.tolerance_mm, ignore),
                "prediction_file": str(pred_path),
                "reference_file": str(ref_path),
                "spacing": list(spacing),
            }
        )
    mean = {
        str(v): {m: _nanmean([c["metrics"][str(v)][m] for c in per_case]) for m in METRICS}
        for v in values
    }
    foreground_mean = {
        m: float(np.mean([mean[str(v)][m] for v in values])) if values else math.nan
        for m in METRICS
    }
    return {
        "foreground_mean": foreground_mean,
        "mean": mean,
        "metric_per_case": per_case,
        "labels": {str(v): labels[v] for v in sorted(labels)},
        "ignore_label": ignore,
        "nsd_tolerance_mm": request.tolerance_mm,
        "spacing": "each reference's NIfTI header (mm)",
        "empty_classes": EMPTY_POLICY,
        "n_cases": len(per_case),
    }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
