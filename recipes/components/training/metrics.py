"""Validation metrics over whole volumes: Dice always, HD95 and surface Dice on request.

Distances are in mm: the voxel spacing comes from each validation image's metadata
(MetaTensor ``pixdim``), so resampled and native-grid datasets are measured alike. Cases
where a class is absent from the label or the prediction give NaN/inf distances; those are
left out of the mean (MONAI warns about them) rather than poisoning it. A dataset mask
restricts every metric to its nonzero voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from monai.networks.utils import one_hot
from omegaconf import DictConfig


def voxel_spacing(image: torch.Tensor) -> list[float] | None:
    """(x, y, z) spacing in mm of a batch-of-1 MetaTensor, else None (unit voxels)."""
    if isinstance(image, MetaTensor):
        pixdim = image.pixdim  # a batch gives a list (or a stack) of per-image spacings
        if isinstance(pixdim, (list, tuple)) and pixdim and isinstance(pixdim[0], torch.Tensor):
            pixdim = pixdim[0]
        spacing = torch.as_tensor(pixdim, dtype=torch.float64)
        return (spacing[0] if spacing.ndim > 1 else spacing).tolist()
    return None


class SegMetrics:
    """Accumulates per-class Dice (and optionally HD95 / surface Dice) over volumes."""

    def __init__(self, num_classes: int, cfg: DictConfig | None = None) -> None:
        self.num_classes = num_classes
        self.dice = DiceMetric(include_background=False, reduction="mean_batch")
        want = cfg or {}
        self.hd95 = (
            HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
            if want.get("hd95")
            else None
        )
        tolerance = float(want.get("surface_tolerance_mm", 2.0))
        self.nsd = (
            SurfaceDiceMetric(
                [tolerance] * (num_classes - 1), include_background=False, reduction="none"
            )
            if want.get("surface_dice")
            else None
        )

    def __call__(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        spacing: Sequence[float] | None,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Score one batch; with ``mask`` (B, 1, ...), only the voxels where it is nonzero."""
        pred = one_hot(logits.argmax(dim=1, keepdim=True), self.num_classes)
        target = one_hot(label.long(), self.num_classes)
        if mask is not None:  # outside the mask: no class at all, in prediction and truth
            keep = (mask > 0).to(pred.dtype)
            pred, target = pred * keep, target * keep
        self.dice(y_pred=pred, y=target)
        if self.hd95 is not None:
            self.hd95(y_pred=pred, y=target, spacing=spacing)
        if self.nsd is not None:
            self.nsd(y_pred=pred, y=target, spacing=spacing)

    def aggregate(self) -> tuple[torch.Tensor, dict[str, float]]:
        """(per-foreground-class Dice, {"val_hd95": ..., "val_surface_dice": ...})."""
        extra: dict[str, float] = {}
        if self.hd95 is not None:
            extra["val_hd95"] = _finite_mean(self.hd95.get_buffer())
        if self.nsd is not None:
            extra["val_surface_dice"] = _finite_mean(self.nsd.get_buffer())
        return self.dice.aggregate().float().cpu(), extra


def _finite_mean(values: torch.Tensor) -> float:
    values = values.float().flatten()
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else float("nan")
