"""``summary.json`` for instance segmentations (``task=em_instance``, ``--instances``).

Each case is scored by the recipe's own instance metrics, the ones validation logs
(:func:`recipes.components.training.instances.instance_scores`: adapted Rand error with its
precision and recall, variation of information split / merge / total, foreground Dice),
inside the case's mask when it has one. The file keeps nnU-Net's layout so that every reader
of a summary works: ``metric_per_case[i].metrics`` and ``mean`` hold one foreground entry
(label 1, the instances' class) with those metrics and its ``Dice`` (the foreground Dice);
``foreground_mean`` is that entry's mean over cases.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recipes.components.testtime.pairs import Pair, load_pair
from recipes.components.training.instances import instance_scores
from recipes.contract import EvaluateRequest

#: summary keys -> instance_scores keys (Dice is the foreground Dice)
KEYS = {
    "Dice": "dice_fg",
    "adapted_rand_error": "adapted_rand_error",
    "adapted_rand_precision": "adapted_rand_precision",
    "adapted_rand_recall": "adapted_rand_recall",
    "voi_split": "voi_split",
    "voi_merge": "voi_merge",
    "voi": "voi",
}
NOTE = (
    "instances scored by recipes/components/training/instances.py instance_scores (the "
    "metrics validation logs): adapted Rand error (ground-truth background ignored), VI split "
    "= H(prediction | truth) and merge = H(truth | prediction) in bits, foreground Dice; only "
    "voxels inside each case's mask count"
)


def evaluate_instances(pairs: list[Pair], request: EvaluateRequest) -> dict[str, Any]:
    """The instance summary of ``pairs`` (module doc)."""
    name = (request.labels or {}).get(1, "foreground")
    per_case = []
    for pair in pairs:
        pred, ref, mask, spacing = load_pair(pair, request)
        scores = instance_scores(pred, ref, mask)
        row = {key: float(scores[source]) for key, source in KEYS.items()}
        row.update(n_pred_instances=len(np.unique(pred[pred > 0])))
        row.update(n_ref_instances=len(np.unique(ref[ref > 0])))
        per_case.append(
            {
                "case": pair.case,
                "metrics": {"1": row},
                "prediction_file": str(pair.prediction),
                "reference_file": str(pair.reference),
                "mask_file": str(pair.mask) if pair.mask else None,
                "spacing": list(spacing),
            }
        )
    keys = [*KEYS, "n_pred_instances", "n_ref_instances"]
    mean = {
        k: float(np.mean([c["metrics"]["1"][k] for c in per_case])) if per_case else math.nan
        for k in keys
    }
    return {
        "task": "em_instance",
        "foreground_mean": {**mean, "IoU": math.nan, "HD95": math.nan, "NSD": math.nan},
        "mean": {"1": mean},
        "metric_per_case": per_case,
        "labels": {"0": "background", "1": name},
        "instance_metrics": NOTE,
        "n_cases": len(per_case),
    }
