"""What an EM stack file is, without MONAI or torch: the suffixes of the HDF5 and TIFF
readers and the lookup of the dataset inside an HDF5 file. Kept import-light because
:mod:`recipes.components.data.readable` answers from it at planning time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

H5_SUFFIXES = ("h5", "hdf5", "hdf")
TIFF_SUFFIXES = ("tif", "tiff")


class DatasetKeyError(KeyError):
    """An HDF5 file lacks the configured dataset; the message names the file and its keys."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def h5_datasets(handle: Any) -> list[str]:
    """Paths of every dataset in an open h5py file (groups walked), sorted."""
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(name)

    handle.visititems(visit)
    return sorted(found)


def h5_dataset_name(path: str | Path, handle: Any, key: str | None) -> str:
    """``key`` (a dataset path such as ``main`` or ``volumes/raw``) if the file has it; with
    ``key`` None, the file's only dataset."""
    names = h5_datasets(handle)
    if key is not None and key in names:
        return key
    if key is None and len(names) == 1:
        return names[0]
    wanted = f"no dataset {key!r}" if key is not None else f"{len(names)} datasets and no key"
    raise DatasetKeyError(
        f"{path}: {wanted}; the file has {names or 'no datasets'}. Set data.dataset_key to one "
        "of them (null: the file's only dataset)"
    )
