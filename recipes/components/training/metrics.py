"""Validation metrics over whole volumes: Dice always, HD95 and surface Dice on request.

Every case and class is scored by the rule ``case_metrics.py`` states (nnU-Net's, the one
``runner evaluate`` uses): a class absent from both the label and the prediction of a volume
is NaN there and left out of that class's mean; absent from one only, it scores Dice 0, NSD 0
and HD95 the volume's diagonal in mm. Distances are in mm: the voxel spacing comes from each
validation image's metadata (MetaTensor ``pixdim``), so resampled and native-grid datasets
are measured alike. A dataset mask restricts every metric to its nonzero voxels. In DDP the
per-case scores are gathered from every rank (MONAI's ``Cumulative``) before the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import Cumulative
from omegaconf import DictConfig

from recipes.components.training.case_metrics import (
    class_means,
    counts,
    distances,
    mean_over_classes,
    overlap,
)


def voxel_spacing(image: torch.Tensor) -> list[float] | None:
    """(x, y, z) spacing in mm of a batch-of-1 MetaTensor, else None (unit voxels)."""
    if isinstance(image, MetaTensor):
        pixdim = image.pixdim  # a batch gives a list (or a stack) of per-image spacings
        if isinstance(pixdim, (list, tuple)) and pixdim and isinstance(pixdim[0], torch.Tensor):
            pixdim = pixdim[0]
        spacing = torch.as_tensor(pixdim, dtype=torch.float64)
        return (spacing[0] if spacing.ndim > 1 else spacing).tolist()
    return None


class _Scores(Cumulative):
    """Per-case rows (one tensor of per-class values per volume), gathered across ranks."""

    def aggregate(self) -> torch.Tensor:  # Cumulative's abstract hook; get_buffer is used
        return self.get_buffer()


class SegMetrics:
    """Accumulates per-class Dice (and optionally HD95 / surface Dice) over volumes."""

    def __init__(self, num_classes: int, cfg: DictConfig | None = None) -> None:
        self.num_classes = num_classes
        want = cfg or {}
        self.hd95 = bool(want.get("hd95"))
        self.nsd_tolerance = (
            float(want.get("surface_tolerance_mm", 2.0)) if want.get("surface_dice") else None
        )
        self.scores = _Scores()

    def __call__(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        spacing: Sequence[float] | None,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Score one batch; with ``mask`` (B, 1, ...), only the voxels where it is nonzero."""
        pred = logits.argmax(dim=1)
        target = label[:, 0].long()
        for b in range(pred.shape[0]):
            keep = None if mask is None else mask[b, 0] > 0
            rows = [self._score(pred[b] == c, target[b] == c, keep, spacing) for c in self._fg]
            # On the logits' device: DDP gathers it with the group's backend (NCCL: CUDA).
            row = torch.tensor(rows, dtype=torch.float64, device=logits.device)
            self.scores.append(row.reshape(len(rows), 3).T)  # (3, classes)

    @property
    def _fg(self) -> range:
        return range(1, self.num_classes)

    def _score(
        self,
        p: torch.Tensor,
        r: torch.Tensor,
        keep: torch.Tensor | None,
        spacing: Sequence[float] | None,
    ) -> tuple[float, float, float]:
        if keep is not None:  # outside the mask: no class at all, in prediction and truth
            p, r = p & keep, r & keep
        dice, _ = overlap(*counts(p, r))
        hd95 = nsd = math.nan
        if self.hd95 or self.nsd_tolerance is not None:
            hd95, nsd = distances(
                p.cpu(), r.cpu(), spacing, hd95=self.hd95, nsd_tolerance_mm=self.nsd_tolerance
            )
        return dice, hd95, nsd

    def aggregate(self) -> tuple[torch.Tensor, dict[str, float]]:
        """(per-foreground-class Dice, {"val_hd95": ..., "val_surface_dice": ...}): each a
        class's mean over the volumes that score it; the extras the mean over classes."""
        buffer = self.scores.get_buffer()
        rows = (
            buffer.cpu().numpy()
            if isinstance(buffer, torch.Tensor)
            else np.full((0, 3, len(self._fg)), np.nan)
        )
        extra: dict[str, float] = {}
        if self.hd95:
            extra["val_hd95"] = mean_over_classes(class_means(rows[:, 1]))
        if self.nsd_tolerance is not None:
            extra["val_surface_dice"] = mean_over_classes(class_means(rows[:, 2]))
        return torch.from_numpy(class_means(rows[:, 0])).float(), extra
