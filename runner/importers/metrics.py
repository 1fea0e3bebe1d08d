"""The source's metric -> the name the recipe logs, and its direction checked.

The recipes log ``val_dice``, ``val_loss``, ``val_hd95``, ``val_surface_dice`` and, for
``task=em_instance``, ``val_adapted_rand_error`` (with precision and recall), ``val_voi``,
``val_voi_split`` and ``val_voi_merge``. A metric whose direction is known (errors, losses,
distances, VI: lower is better; Dice, IoU: higher) with the opposite goal in the source is
written with the right ``mode`` and flagged (``!``); a metric only one configuration logs
brings that configuration into ``base`` (``task=em_instance``, ``training.metrics.hd95=true``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: what the recipes log -> its direction
KNOWN = {
    "val_dice": "max",
    "val_loss": "min",
    "val_hd95": "min",
    "val_surface_dice": "max",
    "val_adapted_rand_error": "min",
    "val_adapted_rand_precision": "max",
    "val_adapted_rand_recall": "max",
    "val_voi": "min",
    "val_voi_split": "min",
    "val_voi_merge": "min",
}
#: other names (lower case, separators as "_", without a val/valid/validation prefix)
ALIASES = {
    "dice": "val_dice",
    "dsc": "val_dice",
    "dice_score": "val_dice",
    "mean_dice": "val_dice",
    "dice_coefficient": "val_dice",
    "loss": "val_loss",
    "hd95": "val_hd95",
    "hausdorff": "val_hd95",
    "hausdorff95": "val_hd95",
    "hd": "val_hd95",
    "surface_dice": "val_surface_dice",
    "nsd": "val_surface_dice",
    "adapted_rand": "val_adapted_rand_error",
    "adapted_rand_error": "val_adapted_rand_error",
    "arand": "val_adapted_rand_error",
    "are": "val_adapted_rand_error",
    "rand_error": "val_adapted_rand_error",
    "voi": "val_voi",
    "vi": "val_voi",
    "variation_of_information": "val_voi",
    "voi_split": "val_voi_split",
    "voi_merge": "val_voi_merge",
}
#: a metric that only some configurations log -> the base override that makes it logged
NEEDS = {
    "val_adapted_rand_error": "task=em_instance",
    "val_adapted_rand_precision": "task=em_instance",
    "val_adapted_rand_recall": "task=em_instance",
    "val_voi": "task=em_instance",
    "val_voi_split": "task=em_instance",
    "val_voi_merge": "task=em_instance",
    "val_hd95": "training.metrics.hd95=true",
    "val_surface_dice": "training.metrics.surface_dice=true",
}
LOWER = re.compile(r"(error|loss|voi|(^|_)vi($|_)|hd95|hausdorff|distance|mse|mae|rmse|nll)")
HIGHER = re.compile(r"(dice|iou|jaccard|acc|precision|recall|f1|auc|score)")
DESCRIBE = {
    "val_adapted_rand_error": "the adapted Rand error",
    "val_voi": "VI",
    "val_hd95": "HD95",
    "val_loss": "the loss",
    "val_dice": "Dice",
}


@dataclass
class Metric:
    name: str
    mode: str
    notes: list[str] = field(default_factory=list)
    needs: str | None = None


def _normal(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return re.sub(r"^(val|valid|validation|eval)_", "", text)


def direction(name: str) -> str | None:
    if name in KNOWN:
        return KNOWN[name]
    text = _normal(name)
    if LOWER.search(text):
        return "min"
    if HIGHER.search(text):
        return "max"
    return None


def resolve(source_name: str | None, goal: str | None, override: str | None = None) -> Metric:
    """The metric and mode to write. ``override``: the user's ``--metric``."""
    notes: list[str] = []
    if override:
        name = override
        if source_name and source_name != override:
            notes.append(f"--metric {override} instead of the source's {source_name}")
    elif source_name is None:
        name = "val_dice" if goal in (None, "max") else "val_loss"
        notes.append(
            f"! the source names no metric: ranking by {name} ({goal or 'max'}); "
            "choose with --metric"
        )
    else:
        text = _normal(source_name)
        name = source_name if source_name in KNOWN else ALIASES.get(text, "")
        if not name and text.startswith("train_"):
            name = ALIASES.get(text.removeprefix("train_"), "")
            if name:
                notes.append(
                    f"! {source_name} is a training metric: ranking by its "
                    f"validation counterpart {name}"
                )
        if not name:
            name = "val_" + text if not text.startswith("val_") else text
            notes.append(
                f"! {source_name}: not a metric the recipes log (they log "
                f"{', '.join(KNOWN)}): written as {name}"
            )
        elif name != source_name:
            notes.append(f"{source_name} -> {name}")
    known = direction(name)
    mode = goal or known or "max"
    if known and goal and known != goal:
        what = DESCRIBE.get(name, name)
        better = "lower" if known == "min" else "higher"
        said = "maximizes" if goal == "max" else "minimizes"
        notes.append(
            f"! the source {said} {source_name or name}, {what}: {better} is better. "
            f"Written mode: {known} (the source's goal would keep the worst trials)"
        )
        mode = known
    return Metric(name, mode, notes, NEEDS.get(name))
