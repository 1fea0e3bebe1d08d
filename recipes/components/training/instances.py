"""Instances from the ``em_instance`` heads, and how good they are.

Decoding is PyTorch Connectomics' binary + contour + distance watershed, with
scikit-image: seeds are the connected components of voxels that are confidently inside
(binary high), away from any boundary (boundary low) and deep in an instance (distance
high); each seed grows by ``skimage.segmentation.watershed`` down the distance map over the
foreground (binary above ``foreground``), so touching vesicles split along their boundary.

Scores (per validation volume, then averaged over volumes): adapted Rand error and variation
of information (split = H(prediction | truth), merge = H(truth | prediction)) in the
convention ``task.em_metrics`` names (``em_scores.py``: ``cremi``, the CREMI / PyTorch
Connectomics one, by default; ``skimage``), and the Dice of the foreground by the one rule of
``case_metrics.py`` (a volume with no foreground in truth and prediction is NaN and left out).
Only voxels inside the dataset's mask count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from skimage.measure import label as connected_components
from skimage.segmentation import watershed

from recipes.components.training import em_scores

DEFAULTS: dict[str, float] = {
    "seed_foreground": 0.75,
    "seed_boundary": 0.3,
    "seed_distance": 0.4,
    "foreground": 0.5,
    "min_seed_size": 8,
    "min_size": 32,
}


def head_maps(output: torch.Tensor) -> np.ndarray:
    """(3, ...) output -> binary and boundary probabilities (sigmoid), distance clipped to
    [0, 1] (the distance head is a linear regression, ``em_losses.HeadMSE``)."""
    output = output.float()
    maps = torch.cat([torch.sigmoid(output[:2]), output[2:3].clamp(0.0, 1.0)])
    return maps.cpu().numpy()


def decode_instances(probs: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """(3, ...) maps (binary, boundary, distance; :func:`head_maps`) -> int32 instance ids,
    0 outside any instance."""
    p = {**DEFAULTS, **dict(params or {})}
    binary, boundary, distance = probs[0], probs[1], probs[2]
    seeds = (
        (binary > p["seed_foreground"])
        & (boundary < p["seed_boundary"])
        & (distance > p["seed_distance"])
    )
    markers = drop_small(connected_components(seeds, connectivity=1), int(p["min_seed_size"]))
    instances = watershed(-distance, markers=markers, mask=binary > p["foreground"])
    return drop_small(instances, int(p["min_size"])).astype(np.int32)


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` without the labelled objects of fewer than ``min_size`` voxels."""
    if min_size <= 1 or labels.max() == 0:
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def instance_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    convention: str = em_scores.DEFAULT,
) -> dict[str, float]:
    """Adapted Rand error / precision / recall, VI split / merge, foreground Dice of one
    volume, on the voxels where ``mask`` is nonzero (all of them without a mask)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if mask is not None:
        keep = np.asarray(mask) > 0
        pred, truth = pred[keep], truth[keep]
    pred, truth = pred.astype(np.int64).ravel(), truth.astype(np.int64).ravel()
    out = em_scores.scores(truth, pred, convention)
    out["dice_fg"] = em_scores.foreground_dice(truth, pred)
    return out


class InstanceMetrics:
    """Accumulates :func:`instance_scores` over validation volumes (batches of one)."""

    def __init__(
        self, watershed_cfg: Mapping[str, Any] | None = None, convention: str = em_scores.DEFAULT
    ) -> None:
        self.params = dict(watershed_cfg or {})
        self.convention = em_scores.check_convention(convention)
        self.scores: list[dict[str, float]] = []

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        """Instances of one volume's (1, 3, ...) network output."""
        return decode_instances(head_maps(logits[0]), self.params)

    def __call__(
        self, logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None
    ) -> np.ndarray:
        """Score one volume; returns its predicted instances."""
        pred = self.predict(logits)
        truth = np.rint(label[0, 0].float().cpu().numpy()).astype(np.int64)
        keep = None if mask is None else mask[0, 0].cpu().numpy()
        self.scores.append(instance_scores(pred, truth, keep, self.convention))
        return pred

    def aggregate(self) -> tuple[torch.Tensor, dict[str, float]]:
        """(foreground Dice as a one-class tensor, {"val_adapted_rand_error": ..., ...})."""
        if not self.scores:
            return torch.tensor([float("nan")]), {}
        means = {k: _nanmean([s[k] for s in self.scores]) for k in self.scores[0]}
        dice = means.pop("dice_fg")
        return torch.tensor([dice]), {f"val_{k}": v for k, v in means.items()}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
