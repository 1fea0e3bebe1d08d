"""Read an MSD or nnU-Net v2 raw dataset into MONAI data loaders.

Both layouts keep ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``; they differ in how a case
lists its channels:

- nnU-Net v2: one file per channel, ``imagesTr/{case}_{XXXX}{file_ending}``, channel names in
  ``channel_names``, labels as ``{name: value}``;
- MSD: a ``training`` list of ``{"image", "label"}`` whose image is one 4D file, channel names
  in ``modality``, labels as ``{value: name}``.

Either way a case becomes ``{"image": path or [paths], "label": path}``; MONAI's LoadImaged
stacks a list of per-channel files as channels and EnsureChannelFirstd moves a 4D file's
channel axis first, so everything after loading is shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import CacheDataset, DataLoader, Dataset, load_decathlon_datalist
from monai.data.utils import partition_dataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    Spacingd,
    SpatialPadd,
)
from omegaconf import DictConfig

from recipes.components.augmentation import augment_transforms
from recipes.components.demo_data import ensure_demo_dataset

KEYS = ("image", "label")


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset besides its loaders."""

    root: Path
    layout: str  # "nnunet" | "msd"
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]  # index = label value
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]


@dataclass
class DataBundle:
    train_loader: DataLoader
    val_loader: DataLoader
    train_transform: Compose  # re-seeded every epoch so that a resumed run samples alike
    info: DatasetInfo


def _case_id(path: str | Path, ending: str) -> str:
    name = Path(path).name
    return name[: -len(ending)] if name.endswith(ending) else name.split(".")[0]


def _ordered_names(by_value: dict[int, str], what: str) -> tuple[str, ...]:
    if sorted(by_value) != list(range(len(by_value))):
        raise ValueError(f"{what} values must be 0..N-1, got {sorted(by_value)}")
    return tuple(by_value[i] for i in range(len(by_value)))


def read_dataset(root: Path, layout: str = "auto") -> tuple[list[dict[str, Any]], DatasetInfo]:
    """List the training cases of ``root``; ``layout`` is auto, nnunet or msd."""
    meta = json.loads((root / "dataset.json").read_text())
    if layout == "auto":
        layout = "msd" if isinstance(meta.get("training"), list) else "nnunet"
    if layout == "msd":
        items = load_decathlon_datalist(root / "dataset.json", True, "training", base_dir=root)
        channels = {int(k): v for k, v in meta["modality"].items()}
        classes = {int(k): v for k, v in meta["labels"].items()}
        for item in items:
            item["case"] = _case_id(item["label"], ".nii.gz")
    elif layout == "nnunet":
        ending = meta["file_ending"]
        channels = {int(k): v for k, v in meta["channel_names"].items()}
        if any(not isinstance(v, int) for v in meta["labels"].values()):
            raise ValueError("region-based nnU-Net labels (lists of values) are not supported")
        classes = {v: k for k, v in meta["labels"].items()}
        cases = sorted(_case_id(p, ending) for p in (root / "labelsTr").glob(f"*{ending}"))
        items = [
            {
                "case": case,
                "image": [str(root / "imagesTr" / f"{case}_{c:04d}{ending}") for c in channels],
                "label": str(root / "labelsTr" / f"{case}{ending}"),
            }
            for case in cases
        ]
    else:
        raise ValueError(f"unknown dataset layout {layout!r}; choose auto, nnunet or msd")
    if not items:
        raise FileNotFoundError(f"no training cases under {root}")
    info = DatasetInfo(
        root=root,
        layout=layout,
        channel_names=_ordered_names(channels, "channel"),
        class_names=_ordered_names(classes, "label"),
        train_cases=(),
        val_cases=(),
    )
    return items, info


def split_cases(
    items: list[dict[str, Any]], val_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic shuffled split; at least one case on each side when there are two."""
    n_val = min(max(1, round(val_fraction * len(items))), len(items) - 1) if len(items) > 1 else 0
    train, val = partition_dataset(
        items, ratios=[len(items) - n_val, n_val], shuffle=True, seed=seed
    )
    return train, val or train  # a single case validates on itself


def load_transforms(data_cfg: DictConfig) -> list[MapTransform]:
    """Deterministic part: load, channel-first, RAS, optional resampling, z-score per channel."""
    keys = list(KEYS)
    transforms: list[MapTransform] = [
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=None),  # labels from the image's space
    ]
    if data_cfg.get("spacing") is not None:
        transforms.append(
            Spacingd(keys, pixdim=list(data_cfg.spacing), mode=("bilinear", "nearest"))
        )
    transforms.append(
        NormalizeIntensityd("image", nonzero=data_cfg.normalize_nonzero, channel_wise=True)
    )
    return transforms


def train_transforms(
    data_cfg: DictConfig, train_cfg: DictConfig, aug_cfg: DictConfig | None = None
) -> Compose:
    """Load, then sample patches with a fixed share centred on foreground, then augment.

    ``aug_cfg``: an augmentation preset (None: the original flips + intensity set);
    ``training.augment: false`` still switches augmentation off altogether.
    """
    keys = list(KEYS)
    patch = list(train_cfg.patch_size)
    pos = float(train_cfg.pos_fraction)
    transforms = [
        *load_transforms(data_cfg),
        SpatialPadd(keys, spatial_size=patch),  # volumes smaller than a patch
        RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=patch,
            pos=pos,
            neg=1.0 - pos,
            num_samples=train_cfg.samples_per_volume,
        ),
    ]
    if train_cfg.augment:
        transforms += augment_transforms(aug_cfg)
    return Compose(transforms)


def _dataset(items: list[dict[str, Any]], transform: Compose, cache: bool) -> Dataset:
    if cache:
        # Caches everything up to the first random transform, i.e. loaded, normalised volumes.
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=1, progress=False)
    return Dataset(items, transform)


def build_data(
    data_cfg: DictConfig, train_cfg: DictConfig, seed: int, aug_cfg: DictConfig | None = None
) -> DataBundle:
    """Loaders for the train/val split of ``data_cfg.root`` (generated first if synthetic)."""
    root = Path(data_cfg.root)
    if data_cfg.get("synthetic") and not (root / "dataset.json").exists():
        ensure_demo_dataset(root)
    items, info = read_dataset(root, data_cfg.get("format", "auto"))
    if len(info.channel_names) != data_cfg.in_channels:
        raise ValueError(
            f"{root} has channels {info.channel_names}, data.in_channels={data_cfg.in_channels}"
        )
    if len(info.class_names) != data_cfg.num_classes:
        raise ValueError(
            f"{root} has labels {info.class_names}, data.num_classes={data_cfg.num_classes}"
        )
    train_items, val_items = split_cases(items, data_cfg.val_fraction, data_cfg.split_seed)
    info = DatasetInfo(
        **{
            **info.__dict__,
            "train_cases": tuple(i["case"] for i in train_items),
            "val_cases": tuple(i["case"] for i in val_items),
        }
    )

    train_tf = train_transforms(data_cfg, train_cfg, aug_cfg)
    train_tf.set_random_state(seed=seed)
    val_tf = Compose(load_transforms(data_cfg))
    workers = int(train_cfg.num_workers)
    train_loader = DataLoader(
        _dataset(train_items, train_tf, data_cfg.cache),
        batch_size=train_cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=False,  # workers must see the per-epoch re-seeded transforms
    )
    val_loader = DataLoader(
        _dataset(val_items, val_tf, data_cfg.cache), batch_size=1, num_workers=workers
    )
    return DataBundle(train_loader, val_loader, train_tf, info)


def seed_for_epoch(seed: int, epoch: int) -> int:
    """Seed of the data transforms in ``epoch``: independent of how the run got there."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
