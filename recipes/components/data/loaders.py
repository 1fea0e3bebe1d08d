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
from monai.data import DataLoader
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
from recipes.components.data.grid import grid_dataset, intensity_window, patch_stride
from recipes.components.data.layouts import DatasetInfo, read_dataset, select_channels
from recipes.components.data.loader_settings import cache_rate, loader_kwargs, volume_dataset
from recipes.components.data.readable import (
    UnreadableDataError,
    case_files,
    file_problems,
    read_cases,
)
from recipes.components.data.samplers import ResumableSampler, ShardSampler
from recipes.components.data.seeding import EpochSeeded, seed_for_epoch
from recipes.components.data.segthor_demo_data import ensure_segthor_demo
from recipes.components.data.slice_pool import slice_batches
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

    def set_epoch(self, epoch: int, batches_done: int = 0, batches: int | None = None) -> None:
        """Call before each training epoch: its shuffle and augmentation follow (seed, epoch).

        ``batches_done``: an earlier attempt trained on that many batches of this epoch (a
        step checkpoint); the loader yields the rest of the epoch's batches only.
        ``batches``: the epoch ends after that many batches (None: a full pass)."""
        self.train_dataset.set_epoch(epoch)
        sampler = self.train_loader.sampler
        size = int(self.train_loader.batch_size or 1)
        if isinstance(sampler, ResumableSampler):
            sampler.skip = batches_done * size
            sampler.limit = None if batches is None else batches * size
        elif batches_done or batches is not None:
            raise ValueError("this train loader cannot start an epoch mid-way or cap it")

    def worker_rss_gb(self) -> list[float]:
        """Peak resident memory of each training loader worker, GiB (empty: no workers)."""
        if not self.train_loader.num_workers:
            return []
        return self.train_dataset.worker_rss_gb()

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
    # data.intensity_range: a fixed window, as chunked volumes' patches are scaled (grid.py).
    window = intensity_window(data_cfg)
    transforms.append(
        window
        or NormalizeIntensityd("image", nonzero=data_cfg.normalize_nonzero, channel_wise=True)
    )
    if data_cfg.get("instance_labels") and task_name(task_cfg) == "semantic" and "label" in keys:
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
    return Compose(
        transforms + random_tail(data_cfg, train_cfg, aug_cfg, slice_axis, keys, task_cfg)
    )


def random_tail(
    data_cfg: DictConfig,
    train_cfg: DictConfig,
    aug_cfg: DictConfig | None,
    slice_axis: int | None,
    keys: Sequence[str],
    task_cfg: Mapping[str, Any] | None,
) -> list[MapTransform]:
    """What follows a training patch's crop: augmentation, then em_instance's targets."""
    out: list[MapTransform] = []
    if train_cfg.augment:
        out += augment_transforms(aug_cfg, 3 if slice_axis is None else 2, list(keys))
    if task_name(task_cfg) == "em_instance":  # after augmentation: targets of what is seen
        out.append(em_targets(data_cfg, task_cfg or {}))
    return out


def _read(data_cfg: DictConfig) -> tuple[list[dict[str, Any]], DatasetInfo]:
    root = Path(data_cfg.root) if data_cfg.get("root") else None
    fmt = data_cfg.get("format", "auto")
    synthetic = data_cfg.get("synthetic")
    if synthetic and root is not None:
        if synthetic == "scroll":  # zarr stores and TIFF folders of sheets with ink
            from recipes.components.data.scroll_demo_data import ensure_scroll_demo

            ensure_scroll_demo(root)
        elif synthetic == "segthor_slices":  # the course's PNG slices, then converted
            ensure_segthor_demo(root)
        elif fmt in STACK_LAYOUTS:
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
    if patch_stride(train_cfg) is not None:  # an epoch: the grid of every training volume
        if slice_axis is not None:
            raise ValueError(
                "training.patch_stride grids 3D patches; dims=2d samples slices at random: "
                "set training.patch_stride=null"
            )
        tail = random_tail(data_cfg, train_cfg, aug_cfg, None, keys, task_cfg)
        load = load_transforms(data_cfg, select, keys, task_cfg, files)
        grid, train_tf = grid_dataset(train_items, data_cfg, train_cfg, tail, load, keys)
        train_ds = EpochSeeded(grid, train_tf, seed, kwargs["num_workers"])
        batch = int(train_cfg.batch_size)
    elif train_cfg.get("batch_slices") is not None:  # N slices across all volumes
        extra = [em_targets(data_cfg, task_cfg or {})] if task == "em_instance" else []
        load = load_transforms(data_cfg, select, keys, task_cfg, files)
        augment = augment_transforms(aug_cfg, 2, keys) if train_cfg.augment else []
        train_ds, batch = slice_batches(
            train_cfg, train_items, load, augment + extra, slice_axis, keys, seed, rate
        )
        train_tf = train_ds.transform
    else:
        train_tf = train_transforms(
            data_cfg, train_cfg, aug_cfg, slice_axis, select, keys, task_cfg, files
        )
        inner = volume_dataset(train_items, train_tf, rate)
        train_ds = EpochSeeded(inner, train_tf, seed, kwargs["num_workers"])
        batch = int(train_cfg.batch_size)
    # Its own generator: the worker seeds it draws at each epoch's start would otherwise
    # advance torch's global RNG, which a step checkpoint restores *after* that draw.
    train_loader = DataLoader(
        train_ds,
        batch_size=batch,
        sampler=ResumableSampler(train_ds),
        generator=torch.Generator().manual_seed(int(seed)),
        **kwargs,
    )
    val_tf = Compose(load_transforms(data_cfg, select, keys, task_cfg, files))
    if task == "em_instance":
        val_tf = Compose([*val_tf.transforms, em_targets(data_cfg, task_cfg or {})])
    val_ds = volume_dataset(val_items, val_tf, rate)
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
