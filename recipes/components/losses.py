"""Segmentation losses from ``cfg.loss``; every loss takes logits (B, C, ...) and labels
(B, 1, ...) holding class indices, which is what the data pipeline yields."""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss
from omegaconf import DictConfig, OmegaConf
from torch import nn


class WeightedCrossEntropy(nn.Module):
    """``torch.nn.CrossEntropyLoss`` adapted to MONAI-style (B, 1, ...) float labels."""

    def __init__(self, weight: torch.Tensor | None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, label[:, 0].long())


def class_weights(loss_cfg: DictConfig, num_classes: int) -> torch.Tensor:
    """Explicit ``class_weights`` or ``background_weight`` for class 0 and 1 for the rest."""
    if loss_cfg.get("class_weights") is not None:
        weights = [float(w) for w in loss_cfg.class_weights]
        if len(weights) != num_classes:
            raise ValueError(f"loss.class_weights has {len(weights)} values, need {num_classes}")
    else:
        weights = [float(loss_cfg.get("background_weight", 1.0))] + [1.0] * (num_classes - 1)
    return torch.tensor(weights, dtype=torch.float32)


def build_loss(loss_cfg: DictConfig, num_classes: int) -> nn.Module:
    """The loss named by ``loss_cfg.name``; MONAI losses get the other keys as kwargs."""
    kwargs: dict[str, Any] = OmegaConf.to_container(loss_cfg, resolve=True)  # type: ignore[assignment]
    name = kwargs.pop("name")
    if name == "dice_ce":
        return DiceCELoss(**kwargs)
    if name == "dice":
        return DiceLoss(**kwargs)
    if name == "ce_weighted":
        return WeightedCrossEntropy(
            class_weights(loss_cfg, num_classes), float(kwargs.get("label_smoothing", 0.0))
        )
    raise ValueError(f"unknown loss {name!r}; choose dice_ce, dice or ce_weighted")
