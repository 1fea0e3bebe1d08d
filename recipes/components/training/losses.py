"""Segmentation losses from ``cfg.loss``; every loss takes logits (B, C, ...) and labels
(B, 1, ...) holding class indices, which is what the data pipeline yields.

``build_loss`` always returns a loss that also accepts deep-supervision outputs (a stacked
(B, S, C, ...) tensor from DynUNet or a list/tuple from MedNeXt), so the trainer does not
need to know which network it trains. ``loss.name: terms`` is a weighted sum of any of the
named losses, each switched on at its own ``start_step`` (optionally ramped in linearly over
``warmup_steps``): e.g. CE alone first, Dice added once the predictions are not all
background, which is when Dice gradients become informative.

A dataset mask (B, 1, ...) restricts every loss to its nonzero voxels (:func:`masked_call`):
losses that take one (``takes_mask``, e.g. the ``em_instance`` heads) get it, any other
loss is computed on the voxels inside the mask only, pooled over the batch.
``loss.name: em_instance`` is the three-head loss of that task (``em_losses.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from monai.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    GeneralizedDiceLoss,
    SoftclDiceLoss,
    TverskyLoss,
)
from monai.networks.utils import one_hot
from omegaconf import DictConfig, OmegaConf
from torch import nn

from recipes.components.training.em_losses import em_terms


def masked_call(
    loss: nn.Module, logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``loss(logits, label)`` counting only the voxels where ``mask`` (B, 1, ...) is nonzero.

    A loss that takes the mask itself gets it; any other sees the kept voxels of the whole
    batch as one (1, C, N) sample, which is exact for means (CE, BCE) and for batch Dice.
    """
    if mask is None:
        return loss(logits, label)
    if getattr(loss, "takes_mask", False):
        return loss(logits, label, mask)
    keep = mask[:, 0] > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0  # nothing to learn from, but a graph for backward
    return loss(logits.movedim(1, -1)[keep].T[None], label.movedim(1, -1)[keep].T[None])


class WeightedCrossEntropy(nn.Module):
    """``torch.nn.CrossEntropyLoss`` adapted to MONAI-style (B, 1, ...) float labels."""

    def __init__(self, weight: torch.Tensor | None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, label[:, 0].long())


class DiceBCE(nn.Module):
    """Sigmoid Dice + binary cross-entropy per channel on one-hot labels.

    MONAI's DiceCELoss only uses BCE for single-channel outputs; this treats every class as
    an independent binary problem, which suits overlapping or very small structures.
    """

    def __init__(
        self, include_background: bool = False, lambda_dice: float = 1.0, lambda_bce: float = 1.0
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(
            include_background=include_background, sigmoid=True, to_onehot_y=True, batch=True
        )
        self.bce = nn.BCEWithLogitsLoss()
        self.lambda_dice, self.lambda_bce = lambda_dice, lambda_bce

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = one_hot(label.long(), logits.shape[1]).to(logits.dtype)
        return self.lambda_dice * self.dice(logits, label) + self.lambda_bce * self.bce(
            logits, target
        )


class DiceBCEclDice(DiceBCE):
    """:class:`DiceBCE` plus ``lambda_cldice`` x MONAI's soft clDice (Shit et al. 2021) on
    the sigmoid outputs: Dice on the soft skeletons, which rewards keeping thin structures
    (ink strokes, sheets) connected rather than only overlapping. ``cldice_iterations``: the
    soft skeleton's erosion steps (about half the thickest structure, in voxels)."""

    def __init__(
        self,
        include_background: bool = False,
        lambda_dice: float = 1.0,
        lambda_bce: float = 1.0,
        lambda_cldice: float = 0.5,
        cldice_iterations: int = 3,
        cldice_smooth: float = 1.0,
    ) -> None:
        super().__init__(include_background, lambda_dice, lambda_bce)
        self.cldice = SoftclDiceLoss(
            iter_=int(cldice_iterations),
            smooth_nr=float(cldice_smooth),
            smooth_dr=float(cldice_smooth),
            include_background=include_background,
            to_onehot_y=True,
            sigmoid=True,
        )
        self.lambda_cldice = float(lambda_cldice)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, label)
        if self.lambda_cldice:
            loss = loss + self.lambda_cldice * self.cldice(logits, label)
        return loss


class WeightedSum(nn.Module):
    """Sum of ``weight * ramp(step) * term``; ``set_step`` is called by the trainer."""

    takes_mask = True  # hands a mask on to each term (masked_call)

    def __init__(
        self,
        terms: Sequence[nn.Module],
        weights: Sequence[float],
        start_steps: Sequence[int],
        warmup_steps: Sequence[int],
    ) -> None:
        super().__init__()
        self.terms = nn.ModuleList(terms)
        self.weights, self.starts, self.warmups = (
            list(weights),
            list(start_steps),
            list(warmup_steps),
        )
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    def factors(self) -> list[float]:
        """Current multiplier of each term: 0 before start_step, then ramped to weight."""
        out = []
        for weight, start, warmup in zip(self.weights, self.starts, self.warmups, strict=True):
            ramp = 0.0 if self.step < start else min(1.0, (self.step - start + 1) / max(1, warmup))
            out.append(weight * ramp)
        return out

    def forward(
        self, logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Zero with a graph: backward works even before any term has started.
        total = logits.sum() * 0.0
        for factor, term in zip(self.factors(), self.terms, strict=True):
            if factor > 0:  # skipped terms cost nothing, not even a forward
                total = total + factor * masked_call(term, logits, label, mask)
        return total


class DeepSupervised(nn.Module):
    """MONAI's DeepSupervisionLoss, also accepting DynUNet's stacked (B, S, C, ...) output.

    Outputs are ordered full resolution first (weights 1, 1/2, 1/4, ... with ``exp``, or
    ``weights``: one per output, e.g. PyTC's seed-era RSUNet weights); the label is resized
    (nearest) to any output of another size. A plain tensor passes through.
    """

    def __init__(
        self, loss: nn.Module, weight_mode: str = "exp", weights: list[float] | None = None
    ) -> None:
        super().__init__()
        self.inner = loss
        self.ds = DeepSupervisionLoss(loss, weight_mode=weight_mode, weights=weights)  # type: ignore[arg-type]

    def forward(
        self, output: Any, label: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if isinstance(output, torch.Tensor) and output.ndim == label.ndim + 1:
            output = list(torch.unbind(output, dim=1))
        if not isinstance(output, (list, tuple)):
            return masked_call(self.inner, output, label, mask)
        if mask is None:
            return self.ds(list(output), label)
        # As DeepSupervisionLoss, with the mask resized (nearest) alongside the label.
        total = output[0].sum() * 0.0
        for weight, out in zip(self.ds.get_weights(len(output)), output, strict=True):
            target, keep = label, mask
            if out.shape[2:] != label.shape[2:]:
                target = F.interpolate(label, size=out.shape[2:], mode="nearest-exact")
                keep = F.interpolate(mask.float(), size=out.shape[2:], mode="nearest-exact")
            total = total + weight * masked_call(self.inner, out.float(), target, keep)
        return total


def class_weights(loss_cfg: DictConfig | dict[str, Any], num_classes: int) -> torch.Tensor:
    """Explicit ``class_weights`` or ``background_weight`` for class 0 and 1 for the rest."""
    if loss_cfg.get("class_weights") is not None:
        weights = [float(w) for w in loss_cfg["class_weights"]]
        if len(weights) != num_classes:
            raise ValueError(f"loss.class_weights has {len(weights)} values, need {num_classes}")
    else:
        weights = [float(loss_cfg.get("background_weight", 1.0))] + [1.0] * (num_classes - 1)
    return torch.tensor(weights, dtype=torch.float32)


# MONAI losses that take the rest of their config as keyword arguments, unchanged.
MONAI_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice_ce": DiceCELoss,
    "dice": DiceLoss,
    "dice_focal": DiceFocalLoss,
    "generalized_dice": GeneralizedDiceLoss,
    "tversky": TverskyLoss,
}
LOSS_NAMES = (*MONAI_LOSSES, "ce_weighted", "dice_bce", "dice_bce_cldice", "terms", "em_instance")
DS_WEIGHT_MODES = ("exp", "same", "two")


def _single(kwargs: dict[str, Any], num_classes: int) -> nn.Module:
    name = kwargs.pop("name")
    if name in MONAI_LOSSES:
        return MONAI_LOSSES[name](**kwargs)
    if name == "ce_weighted":
        return WeightedCrossEntropy(
            class_weights(kwargs, num_classes), float(kwargs.get("label_smoothing", 0.0))
        )
    if name == "dice_bce":
        return DiceBCE(**kwargs)
    if name == "dice_bce_cldice":
        return DiceBCEclDice(**kwargs)
    if name == "terms":
        terms = [dict(t) for t in kwargs["terms"]]
        weights = [float(t.pop("weight", 1.0)) for t in terms]
        starts = [int(t.pop("start_step", 0)) for t in terms]
        warmups = [int(t.pop("warmup_steps", 0)) for t in terms]
        return WeightedSum([_single(t, num_classes) for t in terms], weights, starts, warmups)
    if name == "em_instance":
        return WeightedSum(*em_terms(kwargs))
    raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSS_NAMES)}")


def build_loss(loss_cfg: DictConfig, num_classes: int) -> nn.Module:
    """The loss named by ``loss_cfg.name``; MONAI losses get the other keys as kwargs."""
    kwargs: dict[str, Any] = OmegaConf.to_container(loss_cfg, resolve=True)  # type: ignore[assignment]
    weight_mode = kwargs.pop("deep_supervision_weights", "exp")
    weights = None
    if isinstance(weight_mode, str) and weight_mode.lstrip().startswith("["):
        weight_mode = yaml.safe_load(weight_mode)  # a sweep passes a list as its YAML text
    if isinstance(weight_mode, list):  # explicit weights, full resolution first
        weights, weight_mode = [float(w) for w in weight_mode], "exp"
    elif weight_mode not in DS_WEIGHT_MODES:
        raise ValueError(
            f"loss.deep_supervision_weights={weight_mode!r}: one of {', '.join(DS_WEIGHT_MODES)} "
            "(MONAI's DeepSupervisionLoss) or a list of weights, full resolution first"
        )
    return DeepSupervised(_single(kwargs, num_classes), weight_mode, weights)
