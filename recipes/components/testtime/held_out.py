"""``data.test``: the cases never used for training or for choosing a model.

The key takes one of:

- ``null`` (default): no test split;
- a list of case ids (``[demo_004, demo_005]``): those cases of the dataset;
- a fraction in (0, 1): that share of the dataset's cases (at least one), drawn from the
  cases sorted by id with ``data.split_seed``, independently of the folds and of the
  validation share, so every fold and seed of a matrix holds out the same cases;
- ``{fold: k, folds: K}``: fold k of K folds of the cases sorted by id, shuffled with
  ``data.split_seed`` (MONAI's ``partition_dataset``, as ``data.num_folds`` splits): the
  outer fold of nested cross-validation, whose other cases ``data.num_folds`` then splits
  into the inner folds (the runner's ``cv`` block sets both);
- ``imagesTs`` (or ``{images: imagesTs, labels: labelsTs}``): nnU-Net's held-out folders
  under ``data.root``, cases named by the label files; images one file per channel
  (``CASE_0000.nii.gz``) or one 4D file (MSD);
- for the ``h5`` / ``tiff`` layouts, ``{image, label, mask}`` glob patterns (``stack_cases``).

:func:`exclude_test` is what training calls on the dataset's cases before it splits them
into train and validation; :func:`held_out_items` is what test time predicts and scores.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recipes.components.data.readable import read_cases
from recipes.components.testtime.stack_cases import (
    held_out_stacks,
    is_stack_layout,
    matches_test,
)
from recipes.contract import PredictInputError

Items = list[dict[str, Any]]
FOLDERS = {"images": "imagesTs", "labels": "labelsTs"}


def _spec(data_cfg: Mapping[str, Any]) -> Any:
    from omegaconf import OmegaConf

    spec = data_cfg.get("test")
    return OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec


def is_fold_spec(spec: Any) -> bool:
    """``{fold: k, folds: K}``: an outer fold of the cases."""
    return isinstance(spec, dict) and set(spec) == {"fold", "folds"}


def is_folder_spec(spec: Any) -> bool:
    return isinstance(spec, str) or (isinstance(spec, dict) and not is_fold_spec(spec))


def _fold_ids(ids: list[str], spec: dict[str, Any], seed: int) -> list[str]:
    """The ids of outer fold ``spec['fold']`` of ``spec['folds']`` (``ids`` sorted)."""
    from monai.data.utils import partition_dataset

    folds, fold = spec["folds"], spec["fold"]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (folds, fold)) or folds < 2:
        raise PredictInputError(f"data.test={spec}: fold and folds must be integers, folds >= 2")
    if not 0 <= fold < folds:
        raise PredictInputError(f"data.test={spec}: fold must be one of 0..{folds - 1}")
    if len(ids) < folds:
        raise PredictInputError(
            f"data.test={spec}: {folds} folds need at least {folds} cases, the dataset has "
            f"{len(ids)}"
        )
    parts = partition_dataset(ids, num_partitions=folds, shuffle=True, seed=seed)
    return sorted(parts[fold])


def _ids_from(items: Items, spec: Any, seed: int) -> list[str]:
    """The test case ids among ``items`` for a list or fraction ``spec``."""
    ids = sorted(item["case"] for item in items)
    if is_fold_spec(spec):
        return _fold_ids(ids, spec, seed)
    if isinstance(spec, bool) or not isinstance(spec, (int, float, list, tuple)):
        raise PredictInputError(
            f"data.test={spec!r}: give case ids (a list), a fraction in (0, 1), an outer fold "
            "({fold: k, folds: K}) or imagesTs"
        )
    if isinstance(spec, (list, tuple)):
        wanted = [str(s) for s in spec]
        unknown = [w for w in wanted if w not in ids]
        if unknown:
            close = difflib.get_close_matches(unknown[0], ids, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            shown = ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else "")
            raise PredictInputError(
                f"data.test: no case {', '.join(map(repr, unknown))} in the dataset; "
                f"its cases: {shown}{hint}"
            )
        return sorted(set(wanted))
    if not 0.0 < float(spec) < 1.0:
        raise PredictInputError(f"data.test={spec}: a fraction must be in (0, 1)")
    if len(ids) < 2:
        raise PredictInputError(f"data.test={spec}: the dataset has {len(ids)} case(s)")
    n_test = min(max(1, round(float(spec) * len(ids))), len(ids) - 1)
    # Legacy RandomState: the same permutation on every machine and numpy version.
    order = np.random.RandomState(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:n_test])


def exclude_test(items: Items, data_cfg: Mapping[str, Any]) -> Items:
    """``items`` without the ``data.test`` cases: training and validation never see them.

    Held-out folders (imagesTs) are never among a dataset's cases; a case id present there
    and in the training folders is an error, as it would be for nnU-Net.
    """
    spec = _spec(data_cfg)
    if spec is None:
        return items
    if is_stack_layout(data_cfg) and isinstance(spec, dict):
        return [item for item in items if not matches_test(item["image"], data_cfg, spec)]
    if is_folder_spec(spec):
        try:
            held_out = _folder_cases(data_cfg, spec)
        except PredictInputError:  # no labelsTs (yet): nothing to check, training goes on
            return items
        clash = {i["case"] for i in items} & set(held_out)
        if clash:
            raise PredictInputError(
                f"data.test={spec}: cases {sorted(clash)} are also training cases; "
                "held-out case ids must differ from the training ones"
            )
        return items
    ids = set(_ids_from(items, spec, int(data_cfg.get("split_seed") or 0)))
    return [item for item in items if item["case"] not in ids]


def held_out_items(data_cfg: Mapping[str, Any]) -> Items:
    """The test cases with their images (every dataset channel) and labels."""
    spec = _spec(data_cfg)
    if spec is None:
        raise PredictInputError(
            "data.test is not set: give the held-out cases as ids ([case, ...]), a fraction "
            "(0.2), imagesTs (nnU-Net's imagesTs/ + labelsTs/) or, for HDF5/TIFF stacks, "
            "{image, label, mask} glob patterns, and retrain, so that training never sees them"
        )
    if is_stack_layout(data_cfg) and isinstance(spec, dict):
        return held_out_stacks(data_cfg, spec)
    if is_folder_spec(spec):
        return _folder_items(data_cfg, spec)
    items, _ = _read(data_cfg)
    ids = set(_ids_from(items, spec, int(data_cfg.get("split_seed") or 0)))
    return [item for item in sorted(items, key=lambda i: i["case"]) if item["case"] in ids]


def _read(data_cfg: Mapping[str, Any]) -> tuple[Items, Any]:
    """The dataset's cases, or one clear error (the test cases come from the dataset)."""
    try:
        return read_cases(data_cfg)
    except (OSError, ValueError, KeyError) as err:
        raise PredictInputError(f"data.root={data_cfg.get('root')}: {err}") from None


def _folders(data_cfg: Mapping[str, Any], spec: Any) -> tuple[Path, Path, str]:
    root = Path(str(data_cfg.get("root") or "."))
    if isinstance(spec, str):
        names = {"images": spec, "labels": spec.replace("images", "labels")}
    else:
        unknown = sorted(set(spec) - set(FOLDERS))
        if unknown:
            raise PredictInputError(f"data.test: unknown keys {unknown}; valid: images, labels")
        names = {**FOLDERS, **spec}
    images, labels = (Path(names[k]) for k in ("images", "labels"))
    images, labels = (p if p.is_absolute() else root / p for p in (images, labels))
    ending = ".nii.gz"
    meta = root / "dataset.json"
    if meta.is_file():
        ending = json.loads(meta.read_text()).get("file_ending", ending)
    for what, folder in (("images", images), ("labels", labels)):
        if not folder.is_dir():
            raise PredictInputError(
                f"data.test={spec}: {folder} is not a directory (the held-out {what}; "
                f"the references are needed to score the test cases)"
            )
    return images, labels, ending


def _folder_cases(data_cfg: Mapping[str, Any], spec: Any) -> list[str]:
    _, labels, ending = _folders(data_cfg, spec)
    return sorted(p.name[: -len(ending)] for p in labels.glob(f"*{ending}"))


def _folder_items(data_cfg: Mapping[str, Any], spec: Any) -> Items:
    images, labels, ending = _folders(data_cfg, spec)
    _, info = _read(data_cfg)
    items, missing = [], []
    for case in _folder_cases(data_cfg, spec):
        four_d = images / f"{case}{ending}"
        per_channel = [images / f"{case}_{c:04d}{ending}" for c in range(len(info.channel_names))]
        if all(p.is_file() for p in per_channel):
            image: Any = [str(p) for p in per_channel]
        elif four_d.is_file():
            image = str(four_d)
        else:
            missing += [str(p) for p in per_channel if not p.is_file()]
            continue
        items.append({"case": case, "image": image, "label": str(labels / f"{case}{ending}")})
    if missing:
        raise PredictInputError(
            f"data.test={spec}: {', '.join(missing[:5])} missing; channels: "
            + ", ".join(f"_{i:04d} ({n})" for i, n in enumerate(info.channel_names))
        )
    if not items:
        raise PredictInputError(f"data.test={spec}: no label files *{ending} in {labels}")
    return items
