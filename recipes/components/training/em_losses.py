"""The ``em_instance`` task's loss: one term per head, each masked, summed with weights.

The network has three output channels (binary, boundary, distance; see
``data/em_targets.py``) and the target the same three maps. Binary and boundary are
independent sigmoid problems, scored by MONAI's masked soft Dice plus BCE; the distance
head regresses the normalised distance directly, with MSE (decoding clips it to [0, 1]).
The three terms go into the recipe's
:class:`~recipes.components.training.losses.WeightedSum`, so each has its weight (the
hydra-lv study's ``[1.0, 0.5, 2.0]``) and may start late and ramp in, as ``loss=terms``.

Every term takes the dataset's mask (B, 1, ...) (``takes_mask``): voxels outside it add
nothing to any numerator or denominator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from monai.losses import MaskedDiceLoss
from torch import nn

HEADS = ("binary", "boundary", "distance")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class HeadDiceBCE(nn.Module):
    """Sigmoid Dice (over the batch) + BCE of output channel ``channel``."""

    takes_mask = True

    def __init__(self, channel: int, lambda_dice: float = 1.0, lambda_bce: float = 1.0) -> None:
        super().__init__()
        self.channel, self.lambda_dice, self.lambda_bce = channel, lambda_dice, lambda_bce
        self.dice = MaskedDiceLoss(sigmoid=True, batch=True)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = self.channel
        x, t = logits[:, c : c + 1], target[:, c : c + 1].to(logits.dtype)
        m = mask.to(x.dtype) if mask is not None else torch.ones_like(x)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        return self.lambda_dice * self.dice(x, t, mask=m) + self.lambda_bce * _masked_mean(bce, m)


class HeadMSE(nn.Module):
    """Mean squared error of the output channel itself against a target in [0, 1]: a linear
    regression head (through a sigmoid, the error of the many background voxels saturates
    it and the instances' interiors learn slowly)."""

    takes_mask = True

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = self.channel
        error = (logits[:, c : c + 1] - target[:, c : c + 1]) ** 2
        return _masked_mean(error, mask)


def _triple(value: Any, key: str, default: float) -> list[float]:
    if value is None:
        return [default] * len(HEADS)
    if isinstance(value, str):  # a sweep may pass the vector as a YAML string
        value = yaml.safe_load(value)
    values = [float(v) for v in value]
    if len(values) != len(HEADS):
        raise ValueError(f"loss.{key} needs one value per head {list(HEADS)}, got {values}")
    return values


def em_terms(cfg: Mapping[str, Any]) -> tuple[list[nn.Module], list[float], list[int], list[int]]:
    """(terms, weights, start steps, warm-up steps) of ``loss=em_instance``, for WeightedSum."""
    dice, bce = float(cfg.get("lambda_dice", 1.0)), float(cfg.get("lambda_bce", 1.0))
    terms: Sequence[nn.Module] = [HeadDiceBCE(0, dice, bce), HeadDiceBCE(1, dice, bce), HeadMSE(2)]
    weights = _triple(cfg.get("weights"), "weights", 1.0)
    starts = [int(v) for v in _triple(cfg.get("start_steps"), "start_steps", 0)]
    warmups = [int(v) for v in _triple(cfg.get("warmup_steps"), "warmup_steps", 0)]
    return list(terms), weights, starts, warmups
