"""The ``h5`` and ``tiff`` layouts: volumes found by glob patterns, as EM groups keep them.

A PyTorch Connectomics-style dataset is a folder of stacks named by convention::

    vol1_im.h5  vol1_vesicle_ins.h5  vol1_mask.h5      (training)
    vol_val1_im.h5  vol_val1_vesicle_ins.h5  ...       (validation)

``data.image`` / ``data.label`` / ``data.mask`` are glob patterns under ``data.root`` (or
absolute); an image and its label (and mask) belong together when the wildcards of their
patterns match the same text (``vol*_im.h5`` and ``vol*_vesicle_ins.h5`` pair ``vol1_...`` with
``vol1_...``). ``data.val_image`` / ``val_label`` / ``val_mask`` name validation files the
same way; they replace the random split or the folds, and files they match are left out of
the training set (``vol*_im.h5`` matches ``vol_val1_im.h5`` too). A mask's nonzero voxels
are the ones the loss and the metrics count.

A pattern may also match volumes that are directories: zarr stores (``scroll*.zarr``, the
``zarr`` layout) and folders of TIFF slices (``frag*/volume``), read patch by patch
(``data/chunked.py``). A case is named after its file (``vol1_im``); when two share a name
(``1/volume``, ``2/volume``), after what the wildcards matched (``1``, ``2``).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes.components.data.chunked import is_chunked

if TYPE_CHECKING:
    from recipes.components.data.layouts import DatasetInfo

STACK_LAYOUTS = ("h5", "tiff", "zarr")
ROLES = ("image", "label", "mask")


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching what ``pattern`` globs, one group per wildcard (``*``, ``?``, ``[..]``)."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            while i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1  # '**' captures like '*' (it may span folders)
            out.append("(.*)")
        elif ch == "?":
            out.append("(.)")
        elif ch == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append(f"([{'^' + body[1:] if body.startswith('!') else body}])")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _absolute(root: Path | None, pattern: str) -> str:
    return pattern if root is None or Path(pattern).is_absolute() else str(root / pattern)


def find_files(root: Path | None, pattern: str) -> dict[tuple[str, ...], str]:
    """Files matching ``pattern``, keyed by what its wildcards matched."""
    full = _absolute(root, pattern)
    regex = pattern_regex(full)
    found: dict[tuple[str, ...], str] = {}
    for path in sorted(glob.glob(full, recursive=True)):
        match = regex.match(path)
        if match is None or not (Path(path).is_file() or is_chunked(path)):
            continue
        found[match.groups()] = path
    return found


def _files(
    root: Path | None, patterns: Mapping[str, str | None], exclude: Mapping[str, str | None]
) -> list[dict[str, str]]:
    """Image/label/mask triples of one subset, paired by wildcard matches."""
    image_pattern = patterns["image"]
    assert image_pattern is not None
    by_role: dict[str, dict[tuple[str, ...], str]] = {}
    for role in ROLES:
        if not patterns.get(role):
            continue
        found = find_files(root, str(patterns[role]))
        if exclude.get(role):
            excluded = set(find_files(root, str(exclude[role])).values())
            found = {k: v for k, v in found.items() if v not in excluded}
        by_role[role] = found
    images = by_role["image"]
    if not images:
        raise FileNotFoundError(
            f"no image files match {_absolute(root, image_pattern)!r} (data.image / data.val_image)"
        )
    cases = []
    for key, image in sorted(images.items()):
        item = {"image": image, "wildcards": "_".join(k.strip("/").replace("/", "_") for k in key)}
        for role in ("label", "mask"):
            if role not in by_role:
                continue
            if key not in by_role[role]:
                raise FileNotFoundError(
                    f"{image}: no {role} file matching {_absolute(root, str(patterns[role]))!r} "
                    f"with the same wildcard part {list(key)}"
                )
            item[role] = by_role[role][key]
        cases.append(item)
    return cases


def case_name(path: str) -> str:
    """``vol1_im`` for ``.../vol1_im.h5``: the file name without its extension."""
    return Path(path).name.split(".")[0]


def read_stacks(
    root: Path | None, data_cfg: Mapping[str, Any], layout: str
) -> tuple[list[dict[str, Any]], DatasetInfo]:
    """The cases of an ``h5`` / ``tiff`` dataset; validation files carry ``subset``."""
    from recipes.components.data.layouts import DatasetInfo

    if not data_cfg.get("image") or not data_cfg.get("label"):
        raise ValueError(
            f"data.format={layout} needs data.image and data.label: glob patterns of the image "
            "and label files (e.g. 'vol*_im.h5', 'vol*_vesicle_ins.h5')"
        )
    train = {role: data_cfg.get(role) for role in ROLES}
    val = {role: data_cfg.get(f"val_{role}") for role in ROLES}
    if val["image"] and not val["label"]:
        raise ValueError("data.val_image is set: set data.val_label too")
    if bool(train["mask"]) != bool(val["mask"]) and val["image"]:
        raise ValueError("set data.mask and data.val_mask both, or neither")
    items: list[dict[str, Any]] = _files(root, train, val if val["image"] else {})
    if val["image"]:
        for item in _files(root, val, {}):
            items.append({**item, "subset": "validation", "split_method": "validation-files"})
    seen: dict[str, str] = {}
    names = [case_name(item["image"]) for item in items]
    by_wildcards = len(set(names)) < len(names)  # e.g. 1/volume, 2/volume
    for item, name in zip(items, names, strict=True):
        wildcards = item.pop("wildcards")
        item["case"] = wildcards if by_wildcards and wildcards else name
        if item["case"] in seen:
            raise ValueError(
                f"two image files have the case name {item['case']!r}: {seen[item['case']]} and "
                f"{item['image']}; image file names must be unique"
            )
        seen[item["case"]] = item["image"]
    info = DatasetInfo(
        root=root if root is not None else Path("."),
        layout=layout,
        channel_names=tuple(str(c) for c in data_cfg.get("channel_names") or ("em",)),
        class_names=tuple(str(c) for c in data_cfg.get("class_names") or ("background", "fg")),
    )
    return items, info
