"""When to stop a run early: a Dice that is good enough, or patience run out."""

from __future__ import annotations

from omegaconf import DictConfig

from recipes.components.training.checkpoint import Progress


def early_stop_reason(
    es: DictConfig | None,
    progress: Progress,
    metrics: dict[str, float],
    epoch: int,
    val_interval: int,
) -> str | None:
    """Why to stop after this validation, or None. Call before ``progress`` records a best.

    "Good enough": the target Dice is reached. Patience: counted in validations since the
    last gain of more than ``min_delta`` over the best so far (the first validation counts
    as a gain).
    """
    if not es:
        return None
    dice = metrics["val_dice"]
    if progress.improved_epoch is None or dice > progress.best_metric + float(es.min_delta):
        progress.improved_epoch = epoch
    if es.get("good_enough") is not None and dice >= float(es.good_enough):
        return f"val_dice {dice:.4g} >= good_enough {es.good_enough}"
    patience = es.get("patience")
    if patience is not None and epoch - progress.improved_epoch >= int(patience) * val_interval:
        return f"no val_dice gain > {es.min_delta} in {patience} validations"
    return None
