"""Training batches of N slices drawn across all training volumes (``training.batch_slices``).

The 2D path's default batch is ``training.batch_size`` volumes x ``samples_per_volume``
slices, lesion-centred ``pos_fraction`` of the time (MONAI's ``RandCropByPosNegLabeld``).
With ``training.batch_slices: N`` a batch is instead N independent slices: every slice of
every training volume is one item, an epoch is one seeded permutation of all of them, and a
batch is N consecutive items of it, as a DataLoader with ``shuffle=True`` over a dataset of
slices gives them. That is how the MedSegDiff group trains (``ISLES24Dataset2D`` lists
``(case, slice)`` for every slice of every training case, ``DataLoader(batch_size=32,
shuffle=True)``; ``src/data/loaders.py`` of minanessiem/medseg-diffusion_ISLES24 @ 58ef119),
so their ``b32`` is ``batch_slices: 32``. ``batch_size``, ``samples_per_volume`` and
``pos_fraction`` are then not used.

Each slice is cropped to ``training.patch_size`` at a uniformly random in-plane position
(padded where smaller) on the volume's own grid, then augmented like any 2D patch. (The group
*resizes* each whole slice to 256², so their pixels are larger where slices exceed 256².)
Slices are cut from the cached, preprocessed volumes (``data.cache_rate: 1``): reading a
volume per slice would read each volume hundreds of times an epoch. Order and augmentation
are seeded per (seed, epoch, item) like every training item (``data/seeding.py``), so resume
stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import CacheDataset
from monai.transforms import Compose, MapTransform, RandSpatialCropd, SpatialPadd
from torch.utils.data import Dataset

from recipes.components.data.seeding import EpochSeeded
from recipes.components.data.slices import slice_patch_size, squeeze_slice


class SlicePool(Dataset):
    """Every slice (across ``slice_axis``) of every volume of ``volumes``, one item each,
    one voxel thick, then ``transform`` (the random part)."""

    def __init__(self, volumes: CacheDataset, transform: Compose, slice_axis: int) -> None:
        self.volumes, self.transform, self.axis = volumes, transform, int(slice_axis)
        self.index = [
            (v, s)
            for v in range(len(volumes))
            for s in range(int(volumes[v]["image"].shape[1 + self.axis]))
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, s = self.index[i]
        volume = self.volumes[v]
        item = {
            key: torch.narrow(value, 1 + self.axis, s, 1).clone()
            if isinstance(value, torch.Tensor)
            else value
            for key, value in volume.items()
        }
        return self.transform(item)  # type: ignore[no-any-return]


def slice_batches(
    train_cfg: Any,
    items: list[dict[str, Any]],
    load: list[MapTransform],
    augment: list[MapTransform],
    slice_axis: int | None,
    keys: Sequence[str],
    seed: int,
    cache_rate: float,
) -> tuple[EpochSeeded, int]:
    """(the training dataset of all slices of ``items``, N): volumes loaded (``load``) and
    cached once, each item a slice padded and cropped to ``training.patch_size`` at a random
    position, squeezed to 2D and ``augment``-ed."""
    n = train_cfg.get("batch_slices")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"training.batch_slices must be an integer >= 1 or null, got {n!r}")
    if slice_axis is None:
        raise ValueError("training.batch_slices draws 2D slices: use dims=2d")
    if cache_rate < 1.0:
        raise ValueError(
            "training.batch_slices cuts slices from cached volumes: set data.cache_rate=1 "
            f"(it is {cache_rate})"
        )
    size = slice_patch_size(list(train_cfg.patch_size), slice_axis)
    transform = Compose(
        [
            SpatialPadd(list(keys), spatial_size=size),
            RandSpatialCropd(list(keys), roi_size=size, random_size=False),
            *squeeze_slice(keys, slice_axis),
            *augment,
        ]
    )
    # copy_cache=False: a slice is narrowed and cloned from the cached volume, which the
    # random transforms never see, so the whole volume need not be copied per slice.
    volumes = CacheDataset(items, Compose(load), num_workers=1, progress=False, copy_cache=False)
    workers = int(train_cfg.get("num_workers", 0))  # their peak memory (EpochSeeded)
    pool = SlicePool(volumes, transform, slice_axis)
    return EpochSeeded(pool, transform, seed, workers), n
