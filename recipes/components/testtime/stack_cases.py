"""Test time on EM stacks (the ``h5`` / ``tiff`` layouts): which files, read and written how.

Inputs are stacks as EM groups keep them (PyTorch Connectomics' ``vol*_im.h5``), one volume
per file, ``(z, y, x)``; HDF5 (``.h5``, ``.hdf5``, ``.hdf``: dataset ``data.dataset_key``) or
multi-page TIFF (``.tif``, ``.tiff``), whatever the training files were.

- ``runner predict -i DIR``: every stack file in DIR whose name, extension aside, matches the
  file-name part of ``data.image`` (``vol*_im.h5`` picks ``vol_test1_im.h5`` or
  ``vol_test1_im.tif`` out of a folder that also holds labels and masks, as PyTC's do), else
  every stack file there. Each case is its file name without the
  extension (``vol_test1_im``).
- ``data.test`` of a stack layout: ``{image, label, mask}`` glob patterns under ``data.root``,
  paired by what their wildcards match, as ``data.image`` / ``data.label`` / ``data.mask``
  (PyTC's ``inference.data.test_image`` / ``test_label`` / ``test_mask``); training leaves the
  files they match out.
- Predictions are written as the input was: ``CASE_pred.h5`` (dataset ``main``) or
  ``CASE_pred.tif``, ``(z, y, x)``, like ``mode=test``'s; instance ids (int32) for
  ``task=em_instance``, class labels (uint8) otherwise. Probabilities: ``CASE_probabilities.h5``
  with ``main`` (C, z, y, x) float32.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recipes.components.data.stack_files import H5_SUFFIXES, TIFF_SUFFIXES, h5_dataset_name
from recipes.components.data.stacks import STACK_LAYOUTS, case_name, find_files, pattern_regex
from recipes.contract import PredictInputError

STACK_SUFFIXES = (*H5_SUFFIXES, *TIFF_SUFFIXES)
TEST_KEYS = ("image", "label", "mask")


def is_stack_layout(data_cfg: Mapping[str, Any]) -> bool:
    return data_cfg.get("format") in STACK_LAYOUTS


def is_stack_file(path: str | Path) -> bool:
    return str(path).lower().rsplit(".", 1)[-1] in STACK_SUFFIXES


def folder_items(folder: Path, data_cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cases of an input folder of stacks (module doc), checked (readable, 3D)."""
    if not folder.is_dir():
        raise PredictInputError(f"--input {folder}: not a directory")
    stacks = sorted(
        p for p in folder.iterdir() if p.is_file() and is_stack_file(p) and p.name[0] != "."
    )
    if not stacks:
        seen = ", ".join(sorted(p.name for p in folder.iterdir())[:3]) or "nothing"
        raise PredictInputError(
            f"--input {folder}: no HDF5 or TIFF stacks (found {seen}); expected files ending "
            f"{', '.join('.' + s for s in STACK_SUFFIXES)}, one volume (z, y, x) each"
        )
    stem = case_name(str(data_cfg.get("image") or "*"))
    chosen = [p for p in stacks if fnmatch.fnmatch(case_name(str(p)), stem)] or stacks
    items = [{"case": case_name(str(p)), "image": str(p)} for p in chosen]
    check_stacks(items, data_cfg)
    return items


def _patterns(spec: Mapping[str, Any]) -> dict[str, str | None]:
    unknown = sorted(set(spec) - set(TEST_KEYS))
    if unknown or not spec.get("image") or not spec.get("label"):
        raise PredictInputError(
            f"data.test={dict(spec)}: a stack layout's test split is glob patterns "
            "{image: ..., label: ..., mask: ...} (mask optional), e.g. {image: "
            "'test/vol*_im.h5', label: 'test/vol*_vesicle_ins.h5'}"
            + (f"; unknown keys {unknown}" if unknown else "")
        )
    return {k: (str(spec[k]) if spec.get(k) else None) for k in TEST_KEYS}


def held_out_stacks(data_cfg: Mapping[str, Any], spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``data.test`` stacks: images with their labels (and masks), paired by wildcard."""
    patterns = _patterns(spec)
    root = Path(str(data_cfg.get("root") or "."))
    found = {k: find_files(root, p) for k, p in patterns.items() if p}
    if not found["image"]:
        raise PredictInputError(
            f"data.test.image={patterns['image']!r}: no files match under {root}"
        )
    items, problems = [], []
    for key, image in sorted(found["image"].items()):
        item = {"case": case_name(image), "image": image}
        for role in ("label", "mask"):
            if role not in found:
                continue
            if key not in found[role]:
                problems.append(
                    f"{image}: no data.test.{role} file matching {patterns[role]!r} with the "
                    f"same wildcard part {list(key)}"
                )
                continue
            item[role] = found[role][key]
        items.append(item)
    if problems:
        raise PredictInputError("; ".join(problems[:6]))
    return items


def matches_test(path: str, data_cfg: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether a training file is one of the ``data.test`` images (left out of training)."""
    root = Path(str(data_cfg.get("root") or "."))
    pattern = _patterns(spec)["image"]
    assert pattern is not None
    full = pattern if Path(pattern).is_absolute() else str(root / pattern)
    return pattern_regex(full).match(path) is not None


def read_stack(path: str | Path, dataset_key: str | None = "main") -> np.ndarray:
    """A stack as stored: ``(z, y, x)``; a clear error for an unreadable or non-3D file."""
    try:
        if str(path).lower().rsplit(".", 1)[-1] in TIFF_SUFFIXES:
            import tifffile

            array = np.asarray(tifffile.imread(str(path)))
            array = array[None] if array.ndim == 2 else array
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                array = np.asarray(handle[h5_dataset_name(path, handle, dataset_key)][()])
    except (OSError, KeyError, ValueError) as err:
        raise PredictInputError(f"{path}: cannot be read as a stack ({err})") from None
    if array.ndim != 3:
        raise PredictInputError(f"{path}: expected one 3D (z, y, x) stack, got shape {array.shape}")
    return array


def check_stacks(items: list[dict[str, Any]], data_cfg: Mapping[str, Any]) -> None:
    """Every image opens and holds one 3D stack (its dataset found), before any model loads."""
    key = data_cfg.get("dataset_key", "main")
    for item in items:
        read_stack(item["image"], key)


def output_name(image: str | Path, what: str = "pred") -> str:
    """``CASE_pred.h5`` / ``CASE_pred.tif``: the input's kind of file."""
    tiff = str(image).lower().rsplit(".", 1)[-1] in TIFF_SUFFIXES
    return f"{case_name(str(image))}_{what}{'.tif' if tiff else '.h5'}"


def write_stack(path: Path, zyx: np.ndarray) -> None:
    """``zyx`` to ``path``: HDF5 dataset ``main`` (gzip) or a TIFF stack, by its suffix."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(str(path), zyx)
        return
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("main", data=zyx, compression="gzip")


def xyz_to_zyx(array: np.ndarray) -> np.ndarray:
    """A (..., x, y, z) array as the stack files hold it: (..., z, y, x)."""
    return np.ascontiguousarray(np.swapaxes(array, -1, -3))
