"""Build the recipe's train/val data loaders from ``cfg.data`` and ``cfg.training``.

Reading a dataset's layout is in :mod:`recipes.components.data.layouts`, choosing the split in
:mod:`recipes.components.data.splits`, 2D slicing in :mod:`recipes.components.data.slices` and the
per-item seeding that keeps resume exact in :mod:`recipes.components.data.seeding`. This module
puts them together: pick channels, load and normalise (cached), sample patches, augment,
and hand MONAI DataLoaders to the trainer.

Datasets with masks (the ``h5`` / ``tiff`` layouts' ``data.mask``) carry a third key,
``mask``, through every spatial transform. ``task.name: em_instance`` adds ``target``: the
binary / boundary / distance maps derived from the instance labels (``data/em_targets.py``),
after augmentation for training patches, once (cached) for validation volumes. Before any
volume is read, every file is checked for a reader (``data/readable.py``), so an unreadable
file fails at start-up with its name rather than inside a worker.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    AsDiscreted,
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

from recipes.components.data.augmentation import augment_transforms
from recipes.components.data.demo_data import ensure_demo_dataset
from recipes.components.data.em_demo_data import ensure_em_demo_dataset
from recipes.components.data.em_io import stack_readers
from recipes.components.data.em_targets import EMTargetsd
from recipes.components.data.layouts import DatasetInfo, read_dataset, select_channels
from recipes.components.data.readable import (
    UnreadableDataError,
    case_files,
    file_problems,
    read_cases,
)
from recipes.components.data.samplers import ResumableSampler, ShardSampler
from recipes.components.data.seeding import EpochSeeded, seed_for_epoch
from recipes.components.data.slices import slice_patch_size, squeeze_slice
from recipes.components.data.splits import choose_split, split_cases
from recipes.components.data.stacks import STACK_LAYOUTS

__all__ = [
    "DataBundle",
    "DatasetInfo",
    "build_data",
    "loader_kwargs",
    "read_dataset",
    "seed_for_epoch",
    "split_cases",
]

KEYS = ("image", "label")


@dataclass
class DataBundle:
    train_loader: DataLoader
    val_loader: DataLoader
    train_transform: Compose
    info: DatasetInfo
    train_dataset: EpochSeeded

    def set_epoch(self, epoch: int, batches_done: int = 0) -> None:
        """Call before each training epoch: its shuffle and augmentation follow (seed, epoch).

        ``batches_done``: an earlier attempt trained on that many batches of this epoch (a
        step checkpoint); the loader yields the rest of the epoch's batches only."""
        self.train_dataset.set_epoch(epoch)
        sampler = self.train_loader.sampler
        if isinstance(sampler, ResumableSampler):
            sampler.skip = batches_done * int(self.train_loader.batch_size or 1)
        elif batches_done:
            raise ValueError("this train loader cannot start an epoch mid-way")

    def shard(self, rank: int, world: int) -> bool:
        """Train on rank ``rank``'s share of each epoch and validate its share of the
        volumes (DDP; ``data/samplers.py``). False: too few validation volumes to give every
        rank one, so every rank validates them all (the metrics' means are the same)."""
        sampler = self.train_loader.sampler
        if not isinstance(sampler, ResumableSampler):
            raise ValueError("this train loader cannot be sharded across processes")
        sampler.rank, sampler.world = rank, world
        val = self.val_loader.sampler
        return isinstance(val, ShardSampler) and val.shard(rank, world)


class SelectChannelsd(MapTransform):
    """Check that an image has the dataset's channels, then keep ``indices`` of them.

    For layouts that store all channels in one 4D file (MSD, some datalists); per-channel
    files are picked before loading instead, so unused channels are never read.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        indices: Sequence[int] | None,
        names: Sequence[str],
    ) -> None:
        super().__init__(keys)
        self.indices = list(indices) if indices is not None else None
        self.names = list(names)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            if image.shape[0] != len(self.names):
                source = getattr(image, "meta", {}).get("filename_or_obj", key)
                raise ValueError(
                    f"{source}: {image.shape[0]} channels, but the dataset names "
                    f"{len(self.names)}: {self.names}"
                )
            if self.indices is not None:
                out[key] = image[self.indices]
        return out


def task_name(task_cfg: Mapping[str, Any] | None) -> str:
    """``semantic`` (the default) or ``em_instance``."""
    name = (task_cfg or {}).get("name", "semantic")
    if name not in ("semantic", "em_instance"):
        raise ValueError(f"unknown task {name!r}; choose semantic or em_instance")
    return str(name)


def em_targets(data_cfg: DictConfig, task_cfg: Mapping[str, Any]) -> EMTargetsd:
    return EMTargetsd(
        "label",
        boundary_mode=str(task_cfg.get("boundary_mode", "inner")),
        instance_labels=bool(data_cfg.get("instance_labels", True)),
    )


def load_transforms(
    data_cfg: DictConfig,
    select: SelectChannelsd | None = None,
    keys: Sequence[str] = KEYS,
    task_cfg: Mapping[str, Any] | None = None,
    files: Sequence[str] = (),
) -> list[MapTransform]:
    """Deterministic part: load, channel-first, pick channels, RAS, optional resampling,
    z-score per channel; instance labels become 0/1 for the semantic task.

    ``files``: the dataset's files, to register the HDF5 / TIFF readers they need."""
    keys = list(keys)
    readers = stack_readers(files, data_cfg.get("dataset_key", "main"), data_cfg.get("voxel_size"))
    transforms: list[MapTransform] = [
        LoadImaged(keys, reader=readers or None, image_only=True),
        EnsureChannelFirstd(keys),
    ]
    if select is not None:
        transforms.append(select)
    transforms.append(Orientationd(keys, axcodes="RAS", labels=None))  # the image's own space
    if data_cfg.get("spacing") is not None:
        nearest = ("nearest",) * (len(keys) - 1)
        transforms.append(
            Spacingd(keys, pixdim=list(data_cfg.spacing), mode=("bilinear", *nearest))
        )
    transforms.append(
        NormalizeIntensityd("image", nonzero=data_cfg.normalize_nonzero, channel_wise=True)
    )
    if data_cfg.get("instance_labels") and task_name(task_cfg) == "semantic":
        transforms.append(AsDiscreted("label", threshold=0.5))  # any instance id -> 1
    return transforms


def train_transforms(
    data_cfg: DictConfig,
    train_cfg: DictConfig,
    aug_cfg: DictConfig | None = None,
    slice_axis: int | None = None,
    select: SelectChannelsd | None = None,
    keys: Sequence[str] = KEYS,
    task_cfg: Mapping[str, Any] | None = None,
    files: Sequence[str] = (),
) -> Compose:
    """Load, then sample patches with a fixed share centred on foreground, then augment.

    ``slice_axis`` (2D): patches are one slice thick along that axis and squeezed to 2D.
    ``aug_cfg``: an augmentation preset (None: the original flips + intensity set);
    ``training.augment: false`` still switches augmentation off altogether.
    """
    keys = list(keys)
    patch = slice_patch_size(list(train_cfg.patch_size), slice_axis)
    pos = float(train_cfg.pos_fraction)
    transforms = [
        *load_transforms(data_cfg, select, keys, task_cfg, files),
        SpatialPadd(keys, spatial_size=patch),  # volumes smaller than a patch
        RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=patch,
            pos=pos,
            neg=1.0 - pos,
            num_samples=train_cfg.samples_per_volume,
        ),
        *squeeze_slice(keys, slice_axis),
    ]
    if train_cfg.augment:
        transforms += augment_transforms(aug_cfg, 3 if slice_axis is None else 2, keys)
    if task_name(task_cfg) == "em_instance":  # after augmentation: targets of what is seen
        transforms.append(em_targets(data_cfg, task_cfg or {}))
    return Compose(transforms)


def cache_rate(data_cfg: DictConfig) -> float:
    """``data.cache_rate`` in [0, 1]; the older boolean ``data.cache`` still means 1 or 0."""
    rate, legacy = data_cfg.get("cache_rate"), data_cfg.get("cache")
    if rate is not None and legacy is not None:
        raise ValueError("set data.cache_rate (0..1) or the older data.cache (bool), not both")
    if rate is None:
        return 1.0 if legacy is None or legacy else 0.0
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"data.cache_rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def loader_kwargs(train_cfg: DictConfig) -> dict[str, Any]:
    """DataLoader arguments from ``training``; worker-only ones only when there are workers,
    so that e.g. an axis over num_workers may include 0 with persistent_workers in base."""
    workers = train_cfg.get("num_workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"training.num_workers must be an integer >= 0, got {workers!r}")
    flags = {}
    for key in ("persistent_workers", "pin_memory"):
        value = train_cfg.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"training.{key} must be true or false, got {value!r}")
        flags[key] = value
    prefetch = train_cfg.get("prefetch_factor")
    if prefetch is not None and (
        isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1
    ):
        raise ValueError(
            f"training.prefetch_factor must be an integer >= 1 or null, got {prefetch!r}"
        )
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": flags["pin_memory"]}
    if workers > 0:
        kwargs["persistent_workers"] = flags["persistent_workers"]
        if prefetch is not None:
            kwargs["prefetch_factor"] = prefetch
    return kwargs


def _dataset(items: list[dict[str, Any]], transform: Compose, rate: float) -> Dataset:
    if rate > 0:
        # Caches everything up to the first random transform, i.e. loaded, normalised volumes.
        return CacheDataset(items, transform, cache_rate=rate, num_workers=1, progress=False)
    return Dataset(items, transform)


def _read(data_cfg: DictConfig) -> tuple[list[dict[str, Any]], DatasetInfo]:
    root = Path(data_cfg.root) if data_cfg.get("root") else None
    fmt = data_cfg.get("format", "auto")
    if data_cfg.get("synthetic") and root is not None:
        if fmt in STACK_LAYOUTS:
            ensure_em_demo_dataset(root)
        elif not (root / "dataset.json").exists():
            ensure_demo_dataset(root)
    items, info = read_cases(data_cfg)
    problems = file_problems(case_files(items), data_cfg.get("dataset_key", "main"))
    if problems:
        raise UnreadableDataError(
            f"cannot read the dataset at data.root={root} (data.format={fmt}):\n  "
            + "\n  ".join(problems)
        )
    return items, info


def build_data(
    data_cfg: DictConfig,
    train_cfg: DictConfig,
    seed: int,
    aug_cfg: DictConfig | None = None,
    slice_axis: int | None = None,
    task_cfg: Mapping[str, Any] | None = None,
) -> DataBundle:
    """Loaders for the train/val split of ``data_cfg`` (generated first if synthetic).

    ``slice_axis``: train on 2D slices across this axis (validation stays on volumes).
    ``task_cfg``: ``cfg.task``; em_instance adds the ``target`` maps (module doc).
    """
    items, info = _read(data_cfg)
    task = task_name(task_cfg)
    if any("mask" in item for item in items) and not all("mask" in item for item in items):
        raise ValueError("some cases have a mask and others not: give every case one, or none")
    keys = [*KEYS, "mask"] if items and "mask" in items[0] else list(KEYS)
    files = case_files(items)
    wanted = data_cfg.get("channels")
    if isinstance(wanted, str):  # `data.channels=tmax`: one channel by name
        wanted = [wanted]
    indices, names = select_channels(info, list(wanted) if wanted is not None else None)
    if len(names) != data_cfg.in_channels:
        raise ValueError(
            f"data.in_channels={data_cfg.in_channels}, but {len(names)} channels are fed: "
            f"{list(names)} (data.channels picks them by name from: "
            f"{', '.join(info.channel_names)}); set data.in_channels={len(names)}"
        )
    if len(info.class_names) != data_cfg.num_classes:
        raise ValueError(
            f"{info.root} has labels {info.class_names}, data.num_classes={data_cfg.num_classes}"
        )
    select = None
    if all(isinstance(item["image"], list) for item in items):
        if indices is not None:  # one file per channel: never read the unused ones
            items = [{**item, "image": [item["image"][i] for i in indices]} for item in items]
    else:
        select = SelectChannelsd("image", indices, info.channel_names)

    train_items, val_items, method = choose_split(items, data_cfg)
    kfold = method in ("kfold", "datalist-folds")
    info = replace(
        info,
        channel_names=names,
        train_cases=tuple(i["case"] for i in train_items),
        val_cases=tuple(i["case"] for i in val_items),
        split=method,
        fold=int(data_cfg.fold) if kfold else None,
        num_folds=int(data_cfg.num_folds) if kfold else None,
    )

    rate = cache_rate(data_cfg)
    kwargs = loader_kwargs(train_cfg)
    train_tf = train_transforms(
        data_cfg, train_cfg, aug_cfg, slice_axis, select, keys, task_cfg, files
    )
    train_ds = EpochSeeded(_dataset(train_items, train_tf, rate), train_tf, seed)
    # Its own generator: the worker seeds it draws at each epoch's start would otherwise
    # advance torch's global RNG, which a step checkpoint restores *after* that draw.
    train_loader = DataLoader(
        train_ds,
        batch_size=train_cfg.batch_size,
        sampler=ResumableSampler(train_ds),
        generator=torch.Generator().manual_seed(int(seed)),
        **kwargs,
    )
    val_tf = Compose(load_transforms(data_cfg, select, keys, task_cfg, files))
    if task == "em_instance":
        val_tf = Compose([*val_tf.transforms, em_targets(data_cfg, task_cfg or {})])
    val_ds = _dataset(val_items, val_tf, rate)
    val_loader = DataLoader(val_ds, batch_size=1, sampler=ShardSampler(val_ds), **kwargs)
    return DataBundle(train_loader, val_loader, train_tf, info, train_ds)


def split_record(info: DatasetInfo) -> dict[str, Any]:
    """The split as logged to MLflow (``split.json``): enough to rebuild it or to check it."""
    return {
        "layout": info.layout,
        "root": str(info.root),
        "method": info.split,
        "fold": info.fold,
        "num_folds": info.num_folds,
        "channels": list(info.channel_names),
        "classes": list(info.class_names),
        "train": list(info.train_cases),
        "val": list(info.val_cases),
    }
