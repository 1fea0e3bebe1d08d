"""Volumes too big for memory, read one patch at a time: zarr arrays and folders of TIFF slices.

A scroll scan is tens to hundreds of GB; a DataLoader worker that loads it whole to cut one
patch (what ``LoadImaged`` does) holds the whole volume, once per worker. Here a volume is a
handle that knows its shape and chunks, and reads a patch's voxels only:

- **zarr** (``*.zarr``, the format such scans ship in; the ``zarr`` package): an array, or a
  group holding the array named by ``data.dataset_key`` (a path such as ``0`` for an
  OME-Zarr's full resolution; null: the group's only array). Slicing reads only the chunks
  the patch touches.
- **a folder of TIFF slices** (``00.tif``, ``01.tif``, ... sorted by their numbers): one
  slice per z, each slice a chunk. A patch reads its z slices, and of each only its rows
  where the file allows it (an uncompressed slice is memory-mapped).

Volumes are stored section-major, ``(z, y, x)``, as the HDF5/TIFF stacks of ``em_io``; the
recipe reads x, y, z (``training.patch_size`` is x, y, z), so :meth:`ChunkedVolume.read`
takes x, y, z and returns x, y, z. File handles are opened on first use in the process that
reads (a spawned DataLoader worker gets the path, never an open handle or voxels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recipes.components.data.stack_files import TIFF_SUFFIXES

ZARR_SUFFIX = ".zarr"


class ZarrKeyError(KeyError):
    """A zarr store lacks the configured array; the message names the store and its arrays."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def is_zarr(path: str | Path) -> bool:
    return str(path).rstrip("/").lower().endswith(ZARR_SUFFIX)


def is_tiff_folder(path: str | Path) -> bool:
    """A directory (not a zarr store) holding TIFF slices."""
    p = Path(path)
    return p.is_dir() and not is_zarr(p) and bool(tiff_slices(p))


def is_chunked(path: str | Path) -> bool:
    """Read patch by patch (zarr, TIFF folders) rather than whole."""
    return is_zarr(path) or is_tiff_folder(path)


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def tiff_slices(folder: Path) -> list[Path]:
    """The TIFF files of ``folder`` in slice order (``2.tif`` before ``10.tif``)."""
    files = [p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in TIFF_SUFFIXES]
    return sorted(files, key=lambda p: _natural(p.name))


def _array_paths(group: Any, prefix: str = "") -> list[str]:
    """Every array under a zarr group, as paths (``volumes/raw``), sorted."""
    found = [f"{prefix}{name}" for name, _ in group.arrays()]
    for name, sub in group.groups():
        found += _array_paths(sub, f"{prefix}{name}/")
    return sorted(found)


def open_zarr_array(path: str | Path, key: str | None) -> Any:
    """The array of a zarr store: the store itself when it is an array (``key`` null), else
    its array ``key`` (null: the group's only array). A store without it is a
    :class:`ZarrKeyError` naming the store and the arrays it has."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises its own types for a missing or foreign store
        raise ZarrKeyError(f"{path}: zarr cannot open it as a store ({err})") from None
    if isinstance(node, zarr.Array):
        if key in (None, ""):
            return node
        raise ZarrKeyError(
            f"{path}: is a zarr array, not a group holding {key!r}; set data.dataset_key: null"
        )
    names = _array_paths(node)
    if key not in (None, "") and key in names:
        return node[key]
    if key in (None, "") and len(names) == 1:
        return node[names[0]]
    wanted = f"no array {key!r}" if key not in (None, "") else f"{len(names)} arrays and no key"
    raise ZarrKeyError(
        f"{path}: {wanted}; the store has {names or 'no arrays'}. Set data.dataset_key to one "
        "of them (null: the store's only array)"
    )


class ChunkedVolume:
    """A (z, y, x) volume on disk, read a patch at a time (see the module doc)."""

    def __init__(self, path: str | Path, dataset_key: str | None = None) -> None:
        self.path = str(path)
        self.dataset_key = dataset_key
        self._handle: Any = None
        self.shape_zyx, self.chunks_zyx, self.dtype = self._describe()

    def __getstate__(self) -> dict[str, Any]:
        # A worker (spawned or forked) opens its own handle: never pickle an open one.
        return {**self.__dict__, "_handle": None}

    @property
    def shape(self) -> tuple[int, int, int]:
        """x, y, z: the recipe's order."""
        z, y, x = self.shape_zyx
        return (x, y, z)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape_zyx) * np.dtype(self.dtype).itemsize

    def _describe(self) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype]:
        raise NotImplementedError

    def _read_zyx(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        raise NotImplementedError

    def read(self, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """The box at ``start`` (x, y, z) of ``size`` (x, y, z), as an (x, y, z) array."""
        (x0, y0, z0), (sx, sy, sz) = start, size
        region = (slice(z0, z0 + sz), slice(y0, y0 + sy), slice(x0, x0 + sx))
        return np.ascontiguousarray(np.transpose(self._read_zyx(region), (2, 1, 0)))

    def read_all(self) -> np.ndarray:
        """The whole volume, (z, y, x): for validation's sliding window, never a worker."""
        return self._read_zyx((slice(None), slice(None), slice(None)))

    def chunk_warning(self, patch: Sequence[int]) -> str | None:
        """A warning when the chunks are so large that every patch, wherever it lies, reads
        the whole volume (its chunks at the best alignment already span it); None otherwise.
        ``patch``: x, y, z."""
        px, py, pz = patch
        sizes = (pz, py, px)
        # At the best alignment a patch of `size` meets ceil(size / chunk) chunks.
        touched = [
            min(math.ceil(e / c), math.ceil(p / c))
            for p, c, e in zip(sizes, self.chunks_zyx, self.shape_zyx, strict=True)
        ]
        if any(n * c < e for n, c, e in zip(touched, self.chunks_zyx, self.shape_zyx, strict=True)):
            return None
        if math.prod(self.shape_zyx) <= 2 * math.prod(sizes):
            return None  # the patch is (most of) the volume: reading it all is no waste
        item = np.dtype(self.dtype).itemsize
        suggestion = tuple(min(64, e) for e in self.shape_zyx)
        return (
            f"{self.path}: chunks (z, y, x) = {self.chunks_zyx} over a volume of "
            f"{self.shape_zyx}: a patch of (z, y, x) = {tuple(sizes)} touches "
            f"{math.prod(touched)} chunk(s) wherever it lies, i.e. reads the whole volume "
            f"({self.nbytes / 2**30:.3g} GiB) for every patch of "
            f"{math.prod(sizes) * item / 2**20:.3g} MiB; rechunk it (e.g. chunks {suggestion})"
        )


class ZarrVolume(ChunkedVolume):
    def _array(self) -> Any:
        if self._handle is None:
            self._handle = open_zarr_array(self.path, self.dataset_key)
        return self._handle

    def _describe(self) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype]:
        array = self._array()
        if array.ndim != 3:
            raise ValueError(f"{self.path}: expected a 3D (z, y, x) array, got shape {array.shape}")
        return tuple(array.shape), tuple(array.chunks), np.dtype(array.dtype)

    def _read_zyx(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self._array()[region])


class TiffFolderVolume(ChunkedVolume):
    """One 2D TIFF per z; uncompressed slices are memory-mapped (only the patch's rows are
    read), compressed ones decoded whole (a slice is their chunk)."""

    def _describe(self) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype]:
        import tifffile

        self.files = [str(p) for p in tiff_slices(Path(self.path))]
        if not self.files:
            raise FileNotFoundError(f"{self.path}: no TIFF slices (*.tif, *.tiff) in the folder")
        with tifffile.TiffFile(self.files[0]) as tif:
            page = tif.pages[0]
            shape, dtype = tuple(page.shape), np.dtype(page.dtype)
        if len(shape) != 2:
            raise ValueError(f"{self.files[0]}: expected a 2D slice, got shape {shape}")
        return (len(self.files), *shape), (1, *shape), dtype

    def _slice(self, index: int) -> np.ndarray:
        import tifffile

        path = self.files[index]
        try:
            return tifffile.memmap(path, mode="r")
        except ValueError:  # compressed or not contiguous: decode the page
            return tifffile.imread(path)

    def _read_zyx(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        zs, ys, xs = region
        planes = []
        for z in range(*zs.indices(self.shape_zyx[0])):
            plane = self._slice(z)
            if plane.shape != self.shape_zyx[1:]:
                raise ValueError(
                    f"{self.files[z]}: slice of shape {plane.shape}, the folder's first is "
                    f"{self.shape_zyx[1:]}"
                )
            planes.append(np.array(plane[ys, xs]))
        return np.stack(planes)


def open_volume(path: str | Path, dataset_key: str | None = None) -> ChunkedVolume:
    """The chunked volume at ``path``: a zarr store or a folder of TIFF slices."""
    if is_zarr(path):
        return ZarrVolume(path, dataset_key)
    if Path(path).is_dir():
        return TiffFolderVolume(path)
    raise ValueError(f"{path}: not a zarr store (*.zarr) or a folder of TIFF slices")
