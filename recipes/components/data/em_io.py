"""MONAI image readers for the volumes EM groups keep: HDF5 (h5py) and TIFF stacks (tifffile).

Both are :class:`monai.data.ImageReader` subclasses, so ``LoadImaged`` uses them like its own
NIfTI or ITK readers and everything after loading is shared with the other layouts.

EM stacks are stored section-major, ``(z, y, x)``, and carry no usable voxel size, so the
size comes from the config (``data.voxel_size``, z, y, x in nm, the files' axis order). The
readers return ``(x, y, z)`` with z last, the recipe's RAS convention (RSUNet's in-plane
levels, in-plane 90-degree rotations and the EM artefacts all expect z last), and an affine
whose diagonal is the voxel size in mm, so distances (HD95, surface Dice) are in mm as for
every other dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from recipes.components.data.stack_files import (  # noqa: F401 - re-exported
    H5_SUFFIXES,
    TIFF_SUFFIXES,
    DatasetKeyError,
    h5_dataset_name,
)

NM_PER_MM = 1.0e6


def spatial_affine(voxel_size_zyx_nm: Sequence[float] | None) -> np.ndarray:
    """A diagonal (x, y, z) affine in mm from a (z, y, x) voxel size in nm (None: 1 mm)."""
    if voxel_size_zyx_nm is None:
        return np.eye(4)
    size = [float(v) for v in voxel_size_zyx_nm]
    if len(size) != 3 or min(size) <= 0:
        raise ValueError(f"data.voxel_size must be 3 positive numbers (z, y, x in nm), got {size}")
    z, y, x = size
    return np.diag([x / NM_PER_MM, y / NM_PER_MM, z / NM_PER_MM, 1.0])


class _StackReader(ImageReader):
    """Shared part: (z, y, x) arrays to (x, y, z) data with the configured voxel size."""

    suffixes: tuple[str, ...] = ()

    def __init__(self, voxel_size: Sequence[float] | None = None) -> None:
        super().__init__()
        self.affine = spatial_affine(voxel_size)

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = ensure_tuple(filename)
        return all(str(n).lower().rsplit(".", 1)[-1] in self.suffixes for n in names)

    def _load(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> Any:
        arrays = [self._load(str(name)) for name in ensure_tuple(data)]
        return arrays if len(arrays) > 1 else arrays[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        arrays: list[np.ndarray] = []
        meta: dict = {}
        for array in ensure_tuple(img) if isinstance(img, (list, tuple)) else (img,):
            if array.ndim != 3:
                raise ValueError(f"expected a 3D (z, y, x) stack, got shape {array.shape}")
            xyz = np.ascontiguousarray(np.transpose(array, (2, 1, 0)))
            header: dict = {
                MetaKeys.SPATIAL_SHAPE: np.asarray(xyz.shape),
                MetaKeys.AFFINE: self.affine.copy(),
                MetaKeys.ORIGINAL_AFFINE: self.affine.copy(),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            }
            arrays.append(xyz)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta


class H5Reader(_StackReader):
    """HDF5 volumes (``.h5``, ``.hdf5``, ``.hdf``): the dataset ``dataset_key`` of each file
    (None: the file's only dataset); a missing key is an error naming the file and its keys."""

    suffixes = H5_SUFFIXES

    def __init__(
        self, dataset_key: str | None = "main", voxel_size: Sequence[float] | None = None
    ) -> None:
        super().__init__(voxel_size)
        self.dataset_key = dataset_key

    def _load(self, path: str) -> np.ndarray:
        import h5py

        with h5py.File(path, "r") as handle:
            return np.asarray(handle[h5_dataset_name(path, handle, self.dataset_key)][()])


class ChunkedReader(_StackReader):
    """A zarr store or a folder of TIFF slices, read whole (``data/chunked.py``): what a
    validation volume's sliding window needs. Training reads these volumes a patch at a time
    instead (``data/grid.py``), never through this reader."""

    def __init__(
        self, dataset_key: str | None = None, voxel_size: Sequence[float] | None = None
    ) -> None:
        super().__init__(voxel_size)
        self.dataset_key = dataset_key

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        from recipes.components.data.chunked import is_chunked

        return all(is_chunked(n) for n in ensure_tuple(filename))

    def _load(self, path: str) -> np.ndarray:
        from recipes.components.data.chunked import open_volume

        return open_volume(path, self.dataset_key).read_all()


class TiffReader(_StackReader):
    """Multi-page TIFF stacks (``.tif``, ``.tiff``), one page per section."""

    suffixes = TIFF_SUFFIXES

    def _load(self, path: str) -> np.ndarray:
        import tifffile

        array = np.asarray(tifffile.imread(path))
        if array.ndim == 2:  # a single section: a stack of one
            array = array[None]
        return array


def stack_readers(
    files: Sequence[str], dataset_key: str | None, voxel_size: Sequence[float] | None
) -> list[ImageReader]:
    """The readers ``files`` need beyond MONAI's own (none for NIfTI, NRRD, MHA...)."""
    from recipes.components.data.chunked import is_chunked

    suffixes = {str(f).lower().rsplit(".", 1)[-1] for f in files}
    readers: list[ImageReader] = []
    if any(is_chunked(f) for f in files):  # first: a TIFF folder has no suffix to go by
        readers.append(ChunkedReader(dataset_key, voxel_size))
    if suffixes & set(H5_SUFFIXES):
        readers.append(H5Reader(dataset_key, voxel_size))
    if suffixes & set(TIFF_SUFFIXES):
        readers.append(TiffReader(voxel_size))
    return readers
