"""Slice-wise ("2D") Dice, as the MedSegDiff group measures it, beside the volume Dice.

``val_dice_2d_*`` is the mean over the validation slices of each slice's Dice, pooled over
all volumes (not a mean of per-volume means), computed as the group's ``Dice2DForegroundOnly``
does (``src/metrics/metrics.py`` of minanessiem/medseg-diffusion_ISLES24 @ 58ef119, reported
as ``dice_2d_fg``, the "7 % 2D Dice" of their handover): ``(2|P∩T| + 1e-6) / (|P| + |T| + 1e-6)``
on the binary prediction P and truth T of the slice.

Slices whose label is empty follow ``training.metrics.dice_2d_empty_label`` (logged as that
MLflow param):

- ``skip`` (theirs, the default): the slice is left out of the mean, whatever is predicted
  there: a slice empty in both label and prediction does not count, and neither do false
  positives on lesion-free slices. No lesion slice at all: NaN.
- ``score``: an empty-label slice counts 1 when the prediction is empty too, else 0
  (MONAI's ``DiceMetric(ignore_empty=False)`` convention), so false positives on healthy
  slices lower the mean.
"""

from __future__ import annotations

import torch

EMPTY_LABEL_RULES = ("skip", "score")
SMOOTH = 1e-6  # the group's epsilon


def empty_label_rule(tcfg_metrics: object) -> str:
    """``training.metrics.dice_2d_empty_label``, checked."""
    rule = (tcfg_metrics or {}).get("dice_2d_empty_label", "skip")  # type: ignore[attr-defined]
    if rule not in EMPTY_LABEL_RULES:
        raise ValueError(
            f"training.metrics.dice_2d_empty_label must be one of {EMPTY_LABEL_RULES}, not {rule!r}"
        )
    return str(rule)


class SliceDice:
    """Sums of per-slice Dice over the slices that count (module doc)."""

    def __init__(self, rule: str = "skip") -> None:
        if rule not in EMPTY_LABEL_RULES:
            raise ValueError(f"dice_2d_empty_label must be one of {EMPTY_LABEL_RULES}")
        self.rule = rule
        self.total, self.count = 0.0, 0

    def __call__(self, pred: torch.Tensor, label: torch.Tensor, slice_axis: int) -> None:
        """``pred`` and ``label``: (1, 1, X, Y, Z), foreground > 0.5; slices across
        ``slice_axis`` (0..2 of the spatial axes)."""
        p = (pred[0, 0] > 0.5).movedim(slice_axis, 0).flatten(1).double()
        t = (label[0, 0] > 0.5).movedim(slice_axis, 0).flatten(1).double()
        inter, ps, ts = (p * t).sum(1), p.sum(1), t.sum(1)
        dice = (2 * inter + SMOOTH) / (ps + ts + SMOOTH)
        lesion = ts > 0
        if self.rule == "score":
            dice = torch.where(lesion, dice, (ps == 0).double())
            counted = torch.ones_like(lesion)
        else:
            counted = lesion
        self.total += float(dice[counted].sum())
        self.count += int(counted.sum())

    def mean(self, total: float | None = None, count: int | None = None) -> float:
        """The mean (of the given sums: e.g. over DDP ranks); NaN with no slice counted."""
        total = self.total if total is None else total
        count = self.count if count is None else count
        return total / count if count else float("nan")
