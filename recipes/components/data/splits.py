"""Which cases train and which validate: a datalist's own lists, k folds, or a random share.

In order of precedence:

1. a datalist with its own ``validation`` list (or the ``h5`` / ``tiff`` layouts'
   ``data.val_*`` files): that list validates, ``training`` trains;
2. ``data.num_folds: K`` (k-fold cross-validation, ``data.fold`` in 0..K-1 validates): the
   folds a datalist assigns per case (MONAI's ``fold`` key, as Auto3DSeg writes it) when
   every case has one, else MONAI's ``partition_dataset`` into K interleaved parts after a
   seeded shuffle of the cases sorted by id. Sorting first makes the folds a function of the
   case ids and ``data.split_seed`` only, not of file-system listing order, and numpy's
   legacy ``RandomState`` shuffle is stable across machines and numpy versions;
3. ``data.val_fraction`` of the cases, shuffled with ``data.split_seed``.
"""

from __future__ import annotations

from typing import Any

from monai.data.utils import partition_dataset

from recipes.components.testtime.held_out import exclude_test

Items = list[dict[str, Any]]


def split_cases(items: Items, val_fraction: float, seed: int) -> tuple[Items, Items]:
    """Deterministic shuffled split; at least one case on each side when there are two."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    n_val = min(max(1, round(val_fraction * len(items))), len(items) - 1) if len(items) > 1 else 0
    train, val = partition_dataset(
        items, ratios=[len(items) - n_val, n_val], shuffle=True, seed=seed
    )
    return train, val or train  # a single case validates on itself


def kfold_split(items: Items, num_folds: int, fold: int, seed: int) -> tuple[Items, Items]:
    """Fold ``fold`` of ``num_folds`` validates, the others train (see the module doc)."""
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"data.num_folds must be an integer >= 2 (or null), got {num_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(
            f"data.fold must be one of 0..{num_folds - 1} for data.num_folds={num_folds}, "
            f"got {fold!r}"
        )
    ordered = sorted(items, key=lambda item: item["case"])
    if ordered and all(isinstance(item.get("fold"), int) for item in ordered):
        present = sorted({item["fold"] for item in ordered})
        if present != list(range(num_folds)):
            raise ValueError(
                f"the datalist assigns folds {present}; data.num_folds={num_folds} needs "
                f"folds 0..{num_folds - 1}"
            )
        val = [item for item in ordered if item["fold"] == fold]
        return [item for item in ordered if item["fold"] != fold], val
    if len(ordered) < num_folds:
        raise ValueError(
            f"data.num_folds={num_folds} needs at least that many cases, got {len(ordered)}"
        )
    parts = partition_dataset(ordered, num_partitions=num_folds, shuffle=True, seed=seed)
    val_ids = {item["case"] for item in parts[fold]}
    return (
        [item for item in ordered if item["case"] not in val_ids],
        [item for item in ordered if item["case"] in val_ids],  # both sides in id order
    )


def choose_split(items: Items, data_cfg: Any) -> tuple[Items, Items, str]:
    """(train, val, method) for ``data_cfg``; method is datalist, datalist-folds, kfold or
    random. The ``data.test`` cases are never on either side."""
    items = exclude_test(items, data_cfg)
    num_folds = data_cfg.get("num_folds")
    own_val = [item for item in items if item.get("subset") == "validation"]
    if own_val:
        if num_folds is not None:
            raise ValueError(
                "the datalist has its own 'validation' list; data.num_folds would ignore it. "
                "Set data.num_folds=null, or move those cases into 'training' (with 'fold' keys)"
            )
        train = [item for item in items if item.get("subset") != "validation"]
        # "datalist", or the layout's own name for its validation list (validation-files).
        return train, own_val, str(own_val[0].get("split_method", "datalist"))
    if num_folds is not None:
        fold = data_cfg.get("fold", 0)
        train, val = kfold_split(items, num_folds, fold, int(data_cfg.split_seed))
        predefined = all(isinstance(item.get("fold"), int) for item in items)
        return train, val, "datalist-folds" if predefined else "kfold"
    train, val = split_cases(items, float(data_cfg.val_fraction), int(data_cfg.split_seed))
    return train, val, "random"
