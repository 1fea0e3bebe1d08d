"""Epochs over a patch grid: ``training.patch_stride`` turns an epoch into one shuffled pass
over the strided grid of every training volume, instead of ``samples_per_volume`` random
crops per volume (the ink-detection group's "an epoch is the grid of the scroll").

The grid of a volume is MONAI's ``dense_patch_slices`` (what its sliding-window inferer
walks): starts every ``patch_stride`` voxels along each axis, the last one moved back so that
the patch ends at the volume's edge, so every voxel is inside some patch. An item of the
training set is one (volume, start); the loader's sampler shuffles the items per epoch
(``data/samplers.py``) and a step takes ``training.batch_size`` of them, so a stopped epoch
resumes on the same remaining patches, whatever the loader settings.

Where the patches come from:

- :class:`ChunkedSource` (zarr stores, folders of TIFF slices, ``data/chunked.py``): a patch
  reads only its chunks; a worker holds open handles, never a volume. Intensities are
  scaled with ``data.intensity_range`` (z-scoring would need the whole volume's statistics).
- :class:`LoadedSource` (any other format): the volumes as the recipe loads them (cached
  per ``data.cache_rate``), a patch is a crop of one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.transforms import AsDiscreted, Compose, MapTransform, ScaleIntensityRanged
from omegaconf import DictConfig
from torch.utils.data import Dataset

from recipes.components.data.chunked import ChunkedVolume, is_chunked, open_volume
from recipes.components.data.em_io import spatial_affine
from recipes.components.data.loader_settings import cache_rate, volume_dataset

log = logging.getLogger(__name__)

Start = tuple[int, int, int]


def patch_stride(train_cfg: Mapping[str, Any]) -> list[int] | None:
    """``training.patch_stride`` checked against the patch: None (random crops) or one
    stride per axis, each in 1..patch (a larger stride would skip voxels between patches)."""
    stride = train_cfg.get("patch_stride")
    if stride is None:
        return None
    patch = [int(p) for p in train_cfg["patch_size"]]
    values = list(stride) if isinstance(stride, Sequence) and not isinstance(stride, str) else None
    if values is None or len(values) != len(patch) or len(patch) != 3:
        raise ValueError(
            f"training.patch_stride must be 3 voxel counts (x, y, z) like training.patch_size "
            f"{patch}, got {stride!r}"
        )
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in values):
        raise ValueError(f"training.patch_stride must be integers >= 1, got {values}")
    over = [
        f"{axis}: stride {s} > patch {p}"
        for axis, s, p in zip("xyz", values, patch, strict=True)
        if s > p
    ]
    if over:
        raise ValueError(
            f"training.patch_stride {values} is larger than training.patch_size {patch} "
            f"({'; '.join(over)}): the voxels between two patches would never be trained on; "
            f"use a stride <= the patch (the patch itself: no overlap; half of it: 50 % overlap)"
        )
    return values


def grid_starts(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> list[Start]:
    """The starts (x, y, z) of the strided grid over a volume of ``shape`` (x, y, z)."""
    slices = dense_patch_slices(list(shape), list(patch), list(stride))
    return [tuple(int(s.start) for s in box) for box in slices]  # type: ignore[misc]


def check_fits(name: str, shape: Sequence[int], patch: Sequence[int]) -> None:
    short = [f"{axis}: {s} < {p}" for axis, s, p in zip("xyz", shape, patch, strict=True) if s < p]
    if short:
        raise ValueError(
            f"{name}: volume of (x, y, z) {tuple(shape)} is smaller than training.patch_size "
            f"{list(patch)} ({'; '.join(short)}); a grid patch must fit inside every training "
            "volume: use a smaller patch (or random crops: training.patch_stride=null pads)"
        )


class PatchSource(Protocol):
    shapes: list[tuple[int, int, int]]

    def patch(self, case: int, start: Start, size: Sequence[int]) -> dict[str, Any]: ...


class ChunkedSource:
    """Patches read from chunked volumes; one :class:`ChunkedVolume` per case and key."""

    def __init__(
        self,
        items: list[dict[str, Any]],
        keys: Sequence[str],
        data_cfg: Mapping[str, Any],
        patch: Sequence[int],
    ) -> None:
        self.keys = list(keys)
        key = data_cfg.get("dataset_key")
        self.volumes: list[dict[str, ChunkedVolume]] = []
        for item in items:
            vols = {}
            for k in self.keys:
                path = item[k]
                if isinstance(path, list) or not is_chunked(path):
                    raise ValueError(
                        f"{item['image']} is read a patch at a time, so its {k} must be a zarr "
                        f"store or a folder of TIFF slices too, got {path}"
                    )
                vols[k] = open_volume(path, key)
            shapes = {k: v.shape for k, v in vols.items()}
            if len(set(shapes.values())) > 1:
                raise ValueError(
                    f"{item['image']}: its volumes differ in shape (x, y, z): {shapes}"
                )
            self.volumes.append(vols)
        self.shapes = [v["image"].shape for v in self.volumes]
        self.affine = spatial_affine(data_cfg.get("voxel_size"))
        for vols in self.volumes:
            for vol in vols.values():
                if warning := vol.chunk_warning(patch):
                    log.warning("%s", warning)
        self.post = Compose(chunked_intensity(data_cfg, self.keys))

    def patch(self, case: int, start: Start, size: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, vol in self.volumes[case].items():
            voxels = vol.read(start, size).astype(np.float32)[None]
            out[k] = MetaTensor(torch.from_numpy(voxels), affine=torch.as_tensor(self.affine))
        return self.post(out)


def intensity_window(data_cfg: Mapping[str, Any]) -> ScaleIntensityRanged | None:
    """``data.intensity_range: [low, high]``: raw values mapped to [0, 1], clipped; None
    when unset (the recipe then z-scores whole volumes)."""
    window = data_cfg.get("intensity_range")
    if window is None:
        return None
    if len(window) != 2 or not float(window[0]) < float(window[1]):
        raise ValueError(f"data.intensity_range must be [low, high] with low < high, got {window}")
    return ScaleIntensityRanged("image", float(window[0]), float(window[1]), 0.0, 1.0, clip=True)


def chunked_intensity(data_cfg: Mapping[str, Any], keys: Sequence[str]) -> list[MapTransform]:
    """Per-patch deterministic transforms of a chunked volume: intensities scaled from
    ``data.intensity_range`` to [0, 1] (clipped), instance ids to 0/1 for the semantic task."""
    window = intensity_window(data_cfg)
    if window is None:
        raise ValueError(
            "chunked volumes (zarr, TIFF folders) are read a patch at a time, so they can't be "
            "z-scored over the whole volume: set data.intensity_range: [low, high], the raw "
            "values mapped to [0, 1] (e.g. [0, 65535] for uint16 scans)"
        )
    out: list[MapTransform] = [window]
    if data_cfg.get("instance_labels") and "label" in keys:
        out.append(AsDiscreted("label", threshold=0.5))
    return out


class LoadedSource:
    """Patches cropped from the volumes as the recipe loads them (``volumes``: a dataset of
    loaded, normalised cases, cached per ``data.cache_rate``). The grid is measured on them,
    so with ``cache_rate`` below 1 each uncached volume is loaded once more at start-up."""

    def __init__(self, volumes: Any, keys: Sequence[str]) -> None:
        self.volumes, self.keys = volumes, list(keys)
        self.shapes = [
            tuple(int(s) for s in volumes[i]["image"].shape[1:]) for i in range(len(volumes))
        ]  # type: ignore[misc]

    def patch(self, case: int, start: Start, size: Sequence[int]) -> dict[str, Any]:
        volume = self.volumes[case]
        box = (slice(None), *(slice(s, s + n) for s, n in zip(start, size, strict=True)))
        return {k: volume[k][box] for k in self.keys}


class GridPatches(Dataset):
    """One item per grid position of every volume of ``source``; ``transform`` (the random
    augmentation) runs on each patch, seeded per item by ``EpochSeeded``."""

    def __init__(
        self,
        source: PatchSource,
        patch: Sequence[int],
        stride: Sequence[int],
        names: Sequence[str],
        transform: Compose,
    ) -> None:
        self.source, self.size, self.transform = source, [int(p) for p in patch], transform
        self.positions: list[tuple[int, Start]] = []
        for case, (name, shape) in enumerate(zip(names, source.shapes, strict=True)):
            check_fits(name, shape, self.size)
            self.positions += [(case, s) for s in grid_starts(shape, self.size, stride)]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Any:
        case, start = self.positions[index]
        return self.transform(self.source.patch(case, start, self.size))


def grid_dataset(
    items: list[dict[str, Any]],
    data_cfg: DictConfig,
    train_cfg: DictConfig,
    tail: list[MapTransform],
    load: list[MapTransform],
    keys: Sequence[str],
) -> tuple[GridPatches, Compose]:
    """The training set of ``training.patch_stride`` (``data/grid.py``): one item per grid
    patch; chunked volumes read patch by patch, others loaded (cached) and cropped."""
    stride = patch_stride(train_cfg)
    assert stride is not None
    patch = list(train_cfg.patch_size)
    chunked = [is_chunked(item["image"]) for item in items if not isinstance(item["image"], list)]
    if any(chunked) and not (all(chunked) and len(chunked) == len(items)):
        raise ValueError("training volumes mix chunked (zarr, TIFF folders) and other files")
    if any(chunked):
        if data_cfg.get("spacing") is not None:
            raise ValueError(
                "data.spacing resamples whole volumes; chunked volumes are read a patch at a "
                "time on their own grid: set data.spacing=null"
            )
        source: Any = ChunkedSource(items, keys, data_cfg, patch)
    else:
        source = LoadedSource(volume_dataset(items, Compose(load), cache_rate(data_cfg)), keys)
    augment = Compose(tail)
    names = [str(item.get("case", item["image"])) for item in items]
    return GridPatches(source, patch, stride, names, augment), augment
