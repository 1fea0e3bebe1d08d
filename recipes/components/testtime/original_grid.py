"""``training.validate_on_original_grid``: the selected checkpoint, validated as test is scored.

Validation during training scores the preprocessed grid (RAS, ``data.spacing``); ``runner
evaluate`` scores each test case on its own file's grid, after the preprocessing is undone.
With this key on, a cell that trains to its end predicts its validation cases once more with
``best.pt``, exactly as test time predicts (``inference.py``: sliding window with Gaussian
blending, ``Invertd`` back to the input's grid), and scores them against the label files with
``summary.score_case``, the rule test uses. So ``val_dice_original_grid`` and ``test_dice``
are one metric on two sets of cases; ``best_val_dice`` (the preprocessed grid) stays what
selection used. Logged at the best epoch: ``val_dice_original_grid``, one per class
(``val_dice_original_grid_<class>``), and ``val_hd95_original_grid`` /
``val_surface_dice_original_grid`` when ``training.metrics`` asks for them.

Semantic NIfTI datasets only: an ``em_instance`` task or HDF5/TIFF stacks are validated on
their own grid already (no resampling), and a dataset mask has no counterpart at test time;
those are skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from recipes.components.training.case_metrics import class_means, mean_over_classes

log = logging.getLogger(__name__)
SUFFIX = "_original_grid"


def validate_on_original_grid(
    cfg: DictConfig, checkpoint: Path, val_cases: Sequence[str], device: torch.device
) -> dict[str, float]:
    """The metrics of ``checkpoint`` on ``val_cases`` on their own grids ({} when skipped)."""
    from recipes.components.data.readable import read_cases
    from recipes.components.testtime.inference import (
        Predictor,
        ensemble_probabilities,
        resolve_settings,
    )
    from recipes.components.testtime.inputs import channel_map
    from recipes.components.testtime.summary import load_label_map, score_case
    from recipes.components.training.validation import task_of
    from recipes.contract import ModelRef, PredictInputError

    if task_of(cfg) != "semantic":
        log.warning(
            "validate_on_original_grid: task=%s is scored on its grid already", task_of(cfg)
        )
        return {}
    try:
        cmap = channel_map(cfg.data)
    except PredictInputError as err:
        log.warning("validate_on_original_grid skipped: %s", err)
        return {}
    wanted = set(val_cases)
    items = [i for i in read_cases(cfg.data)[0] if i["case"] in wanted]
    if any("mask" in i for i in items):
        log.warning("validate_on_original_grid skipped: the dataset's masks have no test twin")
        return {}
    settings = resolve_settings(cfg, {"device": str(device)})
    predictor = Predictor(ModelRef(cfg, checkpoint, "best"), cmap, settings, device)
    tcfg = cfg.training.get("metrics") or {}
    tolerance = float(tcfg.get("surface_tolerance_mm", 2.0))
    values = list(range(1, int(cfg.data.num_classes)))
    rows = []
    for item in sorted(items, key=lambda i: i["case"]):
        image = item["image"]
        if isinstance(image, list):  # one file per dataset channel: the model's, in order
            image = [image[i] for i in cmap.fed]
        probs = ensemble_probabilities([predictor], {**item, "image": image})
        ref, spacing = load_label_map(Path(item["label"]))
        rows.append(score_case(probs.argmax(0), ref, spacing, values, tolerance))
    return _aggregate(rows, values, cmap.classes, tcfg)


def _aggregate(
    rows: list[dict[str, dict[str, float]]],
    values: list[int],
    classes: Sequence[str],
    tcfg: Any,
) -> dict[str, float]:
    def per_class(metric: str) -> np.ndarray:
        table = [[row[str(v)][metric] for v in values] for row in rows]
        return class_means(np.asarray(table, dtype=float).reshape(len(rows), len(values)))

    dice = per_class("Dice")
    out = {f"val_dice{SUFFIX}": mean_over_classes(dice)}
    for value, mean in zip(values, dice, strict=True):
        out[f"val_dice{SUFFIX}_{classes[value]}"] = float(mean)
    if tcfg.get("hd95"):
        out[f"val_hd95{SUFFIX}"] = mean_over_classes(per_class("HD95"))
    if tcfg.get("surface_dice"):
        out[f"val_surface_dice{SUFFIX}"] = mean_over_classes(per_class("NSD"))
    return out
