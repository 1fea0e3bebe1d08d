"""Dataset layouts: where the files of each case are, whatever the dataset's convention.

Every layout turns a dataset into the same list of cases, ``{"case": id, "image": path or
[paths], "label": path}``; MONAI's LoadImaged stacks a list of per-channel files as channels
and EnsureChannelFirstd moves a 4D file's channel axis first, so everything after loading is
shared. Layouts (``data.format``):

- ``nnunet`` (v2 raw): ``dataset.json`` + ``imagesTr/{case}_{XXXX}{file_ending}`` (one file
  per channel, names in ``channel_names``) + ``labelsTr/``, labels as ``{name: value}``;
- ``msd``: ``dataset.json`` with a ``training`` list whose images are 4D files, channel names
  in ``modality``, labels as ``{value: name}``;
- ``datalist``: any MONAI datalist JSON (``load_decathlon_datalist``): a ``training`` list,
  optionally a ``validation`` list (used instead of a random split) and per-case ``fold``
  keys (used by k-fold); names come from ``data.channel_names`` / ``data.class_names``;
- ``isles24``: the ISLES'24 release as shipped (BIDS-like ``derivatives/``), see
  :func:`read_isles24`.

``auto`` picks msd or nnunet from ``dataset.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAYOUTS = ("auto", "nnunet", "msd", "datalist", "isles24")
# The four CT perfusion maps ISLES'24 ships per subject, in the challenge's order.
ISLES24_MAPS = ("CBF", "CBV", "MTT", "TMAX")
# Tolerant of the session name (ses-01 in the release, ses-0001 in early copies) and of the
# file sitting in perfusion-maps/ or directly in the session folder ('**' matches both).
ISLES24_MAP_PATTERN = "ses-*/**/{subject}_ses-*_space-ncct_{name}.nii*"
# The follow-up lesion mask: ``..._ses-02_lesion-msk`` in the release, ``..._ses-02_space-ncct
# _lesion-msk`` in some re-exports; both end the same way.
ISLES24_MASK_PATTERN = "ses-*/**/{subject}_ses-*lesion-msk.nii*"


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset besides its loaders."""

    root: Path
    layout: str  # nnunet | msd | datalist | isles24
    channel_names: tuple[str, ...]  # the channels fed to the network, in order
    class_names: tuple[str, ...]  # index = label value
    train_cases: tuple[str, ...] = ()
    val_cases: tuple[str, ...] = ()
    split: str = ""  # how train/val were chosen: random, kfold, datalist, datalist-folds
    fold: int | None = None
    num_folds: int | None = None


def case_id(path: str | Path, ending: str = ".nii.gz") -> str:
    name = Path(path).name
    if name.endswith(ending):
        return name[: -len(ending)]
    return name.removesuffix(".gz").removesuffix(".nii").split(".")[0]


def _ordered_names(by_value: dict[int, str], what: str) -> tuple[str, ...]:
    if sorted(by_value) != list(range(len(by_value))):
        raise ValueError(f"{what} values must be 0..N-1, got {sorted(by_value)}")
    return tuple(by_value[i] for i in range(len(by_value)))


def _names(value: Sequence[str] | None, key: str, layout: str) -> tuple[str, ...]:
    if not value:
        raise ValueError(f"data.format={layout} takes its names from the config: set {key}")
    return tuple(str(v) for v in value)


def read_dataset(
    root: Path,
    layout: str = "auto",
    *,
    datalist: str | Path | None = None,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], DatasetInfo]:
    """The cases of ``root`` in ``layout`` and what is known about them (no split yet).

    ``datalist`` / ``channel_names`` / ``class_names`` are used by the layouts that have no
    ``dataset.json`` of their own (datalist, isles24). Cases a datalist puts in its own
    ``validation`` list carry ``"subset": "validation"``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "datalist":
        return read_datalist(root, datalist, channel_names, class_names)
    if layout == "isles24":
        channels = tuple(channel_names) if channel_names else ISLES24_MAPS
        classes = tuple(class_names) if class_names else ("background", "infarct")
        return read_isles24(root, channels, classes)
    if not (root / "dataset.json").is_file():
        raise FileNotFoundError(
            f"{root / 'dataset.json'} not found: data.format={layout} expects an MSD or nnU-Net "
            "v2 raw dataset (dataset.json, imagesTr/, labelsTr/); other layouts: datalist, isles24"
        )
    meta = json.loads((root / "dataset.json").read_text())
    if layout == "auto":
        layout = "msd" if isinstance(meta.get("training"), list) else "nnunet"
    if layout == "msd":
        from monai.data import load_decathlon_datalist  # here: listing stays torch-free

        items = load_decathlon_datalist(root / "dataset.json", True, "training", base_dir=root)
        channels = {int(k): v for k, v in meta["modality"].items()}
        classes = {int(k): v for k, v in meta["labels"].items()}
        for item in items:
            item["case"] = case_id(item["label"])
    else:
        ending = meta["file_ending"]
        channels = {int(k): v for k, v in meta["channel_names"].items()}
        if any(not isinstance(v, int) for v in meta["labels"].values()):
            raise ValueError("region-based nnU-Net labels (lists of values) are not supported")
        classes = {v: k for k, v in meta["labels"].items()}
        cases = sorted(case_id(p, ending) for p in (root / "labelsTr").glob(f"*{ending}"))
        items = [
            {
                "case": case,
                "image": [str(root / "imagesTr" / f"{case}_{c:04d}{ending}") for c in channels],
                "label": str(root / "labelsTr" / f"{case}{ending}"),
            }
            for case in cases
        ]
    if not items:
        raise FileNotFoundError(f"no training cases under {root}")
    info = DatasetInfo(
        root=root,
        layout=layout,
        channel_names=_ordered_names(channels, "channel"),
        class_names=_ordered_names(classes, "label"),
    )
    return items, info


def read_datalist(
    root: Path | None,
    datalist: str | Path | None,
    channel_names: Sequence[str] | None,
    class_names: Sequence[str] | None,
) -> tuple[list[dict[str, Any]], DatasetInfo]:
    """A MONAI datalist JSON; relative paths resolve against ``root`` (when set) or the
    datalist's own directory, as ``load_decathlon_datalist`` does with ``base_dir``."""
    if not datalist:
        raise ValueError("data.format=datalist needs data.datalist: the path of the JSON file")
    path = Path(datalist)
    if not path.is_absolute() and not path.is_file() and root is not None:
        path = root / path  # a datalist shipped inside the dataset
    if not path.is_file():
        raise FileNotFoundError(f"datalist {datalist} not found (also looked under {root})")
    meta = json.loads(path.read_text())
    if not isinstance(meta.get("training"), list) or not meta["training"]:
        raise ValueError(f"{path}: a datalist needs a non-empty 'training' list")
    from monai.data import load_decathlon_datalist  # here: listing stays torch-free

    base = root if root is not None else path.parent
    items = load_decathlon_datalist(path, True, "training", base_dir=base)
    if meta.get("validation"):
        for item in load_decathlon_datalist(path, True, "validation", base_dir=base):
            items.append({**item, "subset": "validation"})
    channels = _names(channel_names, "data.channel_names", "datalist")
    classes = _names(class_names, "data.class_names", "datalist")
    seen: dict[str, str] = {}
    for n, item in enumerate(items):
        if "image" not in item or "label" not in item:
            raise ValueError(f"{path}: entry {n} needs 'image' and 'label', got {sorted(item)}")
        if isinstance(item["image"], list) and len(item["image"]) != len(channels):
            raise ValueError(
                f"{path}: entry {n} lists {len(item['image'])} image files, "
                f"data.channel_names has {len(channels)}: {list(channels)}"
            )
        item["case"] = case_id(item["label"])
        if item["case"] in seen:
            raise ValueError(
                f"{path}: two entries have the case id {item['case']!r} "
                f"({seen[item['case']]} and {item['label']}); label file names must be unique"
            )
        seen[item["case"]] = item["label"]
    info = DatasetInfo(root=base, layout="datalist", channel_names=channels, class_names=classes)
    return items, info


def _one(subject_dir: Path, pattern: str, subject: str, what: str) -> str:
    found = sorted(subject_dir.glob(pattern))
    if not found:
        raise FileNotFoundError(
            f"ISLES'24 subject {subject}: no {what} file matching '{pattern}' under {subject_dir}"
        )
    if len(found) > 1:
        listed = ", ".join(str(p.relative_to(subject_dir)) for p in found)
        raise ValueError(
            f"ISLES'24 subject {subject}: {len(found)} {what} files match '{pattern}' under "
            f"{subject_dir} ({listed}); keep one"
        )
    return str(found[0])


def read_isles24(
    root: Path, channel_names: Sequence[str], class_names: Sequence[str]
) -> tuple[list[dict[str, Any]], DatasetInfo]:
    """The ISLES'24 training release, one case per subject, read where the challenge puts it::

        root/derivatives/sub-stroke0001/ses-01/perfusion-maps/
            sub-stroke0001_ses-01_space-ncct_{cbf,cbv,mtt,tmax}.nii.gz
        root/derivatives/sub-stroke0001/ses-02/sub-stroke0001_ses-02_lesion-msk.nii.gz

    The maps are co-registered to the admission NCCT (``space-ncct``) and so is the follow-up
    lesion mask: channels and label share one grid. ``root`` may also be ``derivatives/``
    itself. Each of ``channel_names`` is globbed per subject in lower case, as the release
    spells its files, so other ``space-ncct`` derivatives (e.g. ``CTA``) can be channels too.
    """
    derivatives = root / "derivatives" if (root / "derivatives").is_dir() else root
    subjects = sorted(p for p in derivatives.glob("sub-*") if p.is_dir())
    if not subjects:
        raise FileNotFoundError(
            f"no ISLES'24 subjects (sub-*/ folders) under {derivatives}; data.root must be the "
            "release's folder holding derivatives/ (e.g. .../train)"
        )
    items = []
    for subject_dir in subjects:
        subject = subject_dir.name
        images = [
            _one(
                subject_dir,
                ISLES24_MAP_PATTERN.format(subject=subject, name=name.lower()),
                subject,
                f"{name} map",
            )
            for name in channel_names
        ]
        label = _one(subject_dir, ISLES24_MASK_PATTERN.format(subject=subject), subject, "mask")
        items.append({"case": subject, "image": images, "label": label})
    info = DatasetInfo(
        root=root,
        layout="isles24",
        channel_names=tuple(str(c) for c in channel_names),
        class_names=tuple(str(c) for c in class_names),
    )
    return items, info


def select_channels(
    info: DatasetInfo, wanted: Sequence[str] | None
) -> tuple[tuple[int, ...] | None, tuple[str, ...]]:
    """Indices and names of the ``data.channels`` picked by name (case-insensitive).

    None: all channels. Order follows ``wanted``, so ``[tmax, cbf]`` swaps them.
    """
    if wanted is None:
        return None, info.channel_names
    lower = [c.lower() for c in info.channel_names]
    indices = []
    for name in wanted:
        if str(name).lower() not in lower:
            raise ValueError(
                f"data.channels: no channel {name!r} in {info.root}; "
                f"valid names: {', '.join(info.channel_names)}"
            )
        indices.append(lower.index(str(name).lower()))
    if len(set(indices)) != len(indices):
        raise ValueError(f"data.channels lists a channel twice: {list(wanted)}")
    if not indices:
        raise ValueError("data.channels is empty; null feeds every channel")
    return tuple(indices), tuple(info.channel_names[i] for i in indices)
