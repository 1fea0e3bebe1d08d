"""One rule for every overlap and distance metric, in validation and at test time: nnU-Net's.

Per case (a volume) and foreground class, with the class's voxels in the prediction P and in
the reference R (TP, FP, FN counted as nnU-Net counts them):

- **empty in both** (TP + FP + FN = 0): Dice, IoU, HD95 and NSD are NaN for that case and
  left out of the class's mean: there is nothing to score;
- **empty in one only** (a missed or a hallucinated class): Dice, IoU and NSD are 0 and HD95
  is the image's diagonal in mm (the largest distance possible), so the error counts;
- otherwise Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN) (nnU-Net's formulas, in
  float64), HD95 and NSD from MONAI (``compute_hausdorff_distance`` at the 95th percentile,
  ``compute_surface_dice``) at the case's voxel spacing.

A class's figure is the mean over the cases that score it; the overall figure is the mean of
the class figures (the classes with a case to score). Validation (``val_dice``), ``runner
evaluate`` (``summary.json``, ``test_dice``) and the EM recipe's foreground Dice all follow it:
:data:`METRIC_RULES` is logged with every run as the param ``metric_rules``. (MONAI's
``DiceMetric`` defaults to ``ignore_empty=True``: a class absent from the truth but predicted
scores NaN and drops out, so its false positives are never counted; that is not used.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

#: The rule, as a run records it (the param ``metric_rules``) and summary.json states it.
METRIC_RULES = (
    "nnU-Net's: per case and class, NaN when the class is absent from both prediction and "
    "reference (left out of the means), Dice/IoU/NSD 0 and HD95 the image diagonal (mm) when "
    "absent from one; a class's figure is the mean over its scored cases, the overall figure "
    "the mean over classes"
)


def counts(pred: torch.Tensor, ref: torch.Tensor) -> tuple[int, int, int]:
    """(TP, FP, FN) of two boolean masks."""
    tp = int(torch.count_nonzero(pred & ref))
    return tp, int(torch.count_nonzero(pred)) - tp, int(torch.count_nonzero(ref)) - tp


def overlap(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """(Dice, IoU) by the rule: NaN when empty in both, else nnU-Net's formulas."""
    if tp + fp + fn == 0:
        return math.nan, math.nan
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | None) -> float:
    """The image's diagonal in mm: the HD95 of a class present on one side only."""
    sizes = np.asarray(shape, dtype=float) * (np.asarray(spacing) if spacing else 1.0)
    return float(np.linalg.norm(sizes))


def distances(
    pred: torch.Tensor,
    ref: torch.Tensor,
    spacing: Sequence[float] | None,
    *,
    hd95: bool = True,
    nsd_tolerance_mm: float | None = None,
) -> tuple[float, float]:
    """(HD95 mm, NSD) of two boolean masks of one case by the rule (NaN where not asked)."""
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not (has_pred or has_ref):
        return math.nan, math.nan
    if not (has_pred and has_ref):
        worst = diagonal_mm(tuple(ref.shape), spacing)
        return (worst if hd95 else math.nan), (0.0 if nsd_tolerance_mm is not None else math.nan)
    yp, yr = pred[None, None].float(), ref[None, None].float()
    where = list(spacing) if spacing else None
    h = n = math.nan
    with warnings.catch_warnings():  # MONAI's own use of its deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy")
        if hd95:
            h = compute_hausdorff_distance(
                yp, yr, include_background=True, percentile=95, spacing=where
            )[0, 0].item()
        if nsd_tolerance_mm is not None:
            n = compute_surface_dice(
                yp, yr, [nsd_tolerance_mm], include_background=True, spacing=where
            )[0, 0].item()
    return h, n


def class_means(per_case: np.ndarray | torch.Tensor) -> np.ndarray:
    """(cases, classes) -> each class's mean over the cases that score it (NaN: none does)."""
    values = np.asarray(per_case, dtype=np.float64)
    if values.size == 0:
        return np.full(values.shape[1:] if values.ndim > 1 else (0,), np.nan)
    scored = ~np.isnan(values)
    total = np.where(scored, values, 0.0).sum(axis=0)
    n = scored.sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def mean_over_classes(means: Sequence[float] | np.ndarray) -> float:
    """The overall figure: the mean of the class figures that exist (NaN: none does)."""
    finite = [float(m) for m in np.asarray(means, dtype=np.float64).ravel() if not math.isnan(m)]
    return float(np.mean(finite)) if finite else math.nan
