"""Can the recipe read every file of a dataset? Answered before any voxel is loaded.

MONAI's ``LoadImaged`` picks a reader by file extension when a volume is loaded; a file no
installed reader opens then fails deep inside a worker as ``RuntimeError: applying transform
<...LoadImaged object ...>``, minutes after start-up and without the cause. This module
answers the same question from the file list alone: every file exists, its extension has a
reader, that reader's package is installed, and an HDF5 file holds the configured dataset.

:func:`check_readable` is the entry point for a runner's planning step (one call per
distinct ``data`` config); the recipe calls it at start-up and raises
:class:`UnreadableDataError` with the same messages. Importing this module loads neither
torch nor MONAI, so planning stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes.components.data.stack_files import H5_SUFFIXES, TIFF_SUFFIXES, h5_dataset_name

if TYPE_CHECKING:
    from recipes.components.data.layouts import DatasetInfo


@dataclass(frozen=True)
class Reader:
    name: str  # the reader class LoadImaged uses
    module: str  # what must be importable
    package: str  # what to pip install


NIBABEL = Reader("NibabelReader", "nibabel", "nibabel")
ITK = Reader("ITKReader", "itk", "itk")
NRRD = Reader("NrrdReader", "nrrd", "pynrrd")
H5 = Reader("H5Reader (recipes.components.data.em_io)", "h5py", "h5py")
TIFF = Reader("TiffReader (recipes.components.data.em_io)", "tifffile", "tifffile")
NUMPY = Reader("NumpyReader", "numpy", "numpy")
PIL = Reader("PILReader", "PIL", "pillow")
PYDICOM = Reader("PydicomReader", "pydicom", "pydicom")
ZARR = Reader("ChunkedReader (recipes.components.data.chunked)", "zarr", "zarr")

# Extension -> the readers that open it, in the order LoadImaged prefers them. nnU-Net's
# ``file_ending`` values are all here (.nii.gz, .nrrd, .mha, .tif); ITK also reads MetaImage
# headers (.mhd) with their raw data beside them.
READERS: dict[str, tuple[Reader, ...]] = {
    ".nii": (NIBABEL, ITK),
    ".nii.gz": (NIBABEL, ITK),
    ".nrrd": (NRRD, ITK),
    ".seg.nrrd": (NRRD, ITK),
    ".nhdr": (NRRD, ITK),
    ".mha": (ITK,),
    ".mhd": (ITK,),
    ".dcm": (PYDICOM, ITK),
    ".npy": (NUMPY,),
    ".npz": (NUMPY,),
    ".png": (PIL, ITK),
    ".jpg": (PIL, ITK),
    ".jpeg": (PIL, ITK),
    ".bmp": (PIL, ITK),
    **{f".{s}": (H5,) for s in H5_SUFFIXES},
    **{f".{s}": (TIFF,) for s in TIFF_SUFFIXES},
}


class UnreadableDataError(ValueError):
    """Files of the dataset that no installed reader can open; one line per problem."""


def extension(path: str | Path) -> str:
    """The extension that decides the reader: ``.nii.gz`` and ``.seg.nrrd`` are one each."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def installed(reader: Reader) -> bool:
    return importlib.util.find_spec(reader.module) is not None


def describe(readers: Iterable[Reader]) -> str:
    return " or ".join(f"{r.name} (pip install {r.package})" for r in readers)


def read_cases(data_cfg: Mapping[str, Any]) -> tuple[list[dict[str, Any]], DatasetInfo]:
    """The dataset's cases as the recipe lists them (no synthetic data is generated here)."""
    # Imported here: the layouts pull in MONAI only for MSD and datalists, not at import.
    from recipes.components.data.layouts import read_dataset
    from recipes.components.data.stacks import STACK_LAYOUTS, read_stacks

    root = Path(data_cfg["root"]) if data_cfg.get("root") else None
    fmt = data_cfg.get("format", "auto")
    if fmt in STACK_LAYOUTS:
        return read_stacks(root, data_cfg, fmt)
    if root is None and fmt != "datalist":
        raise ValueError(f"data.root is not set (data.format={fmt})")
    return read_dataset(
        root,  # type: ignore[arg-type]  # None only for datalists, which resolve their own
        fmt,
        datalist=data_cfg.get("datalist"),
        channel_names=data_cfg.get("channel_names"),
        class_names=data_cfg.get("class_names"),
    )


def case_files(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every file the cases name (images, per-channel images, labels, masks), in order."""
    files: list[str] = []
    for item in items:
        for role in ("image", "label", "mask"):
            value = item.get(role)
            if isinstance(value, list):
                files += [str(v) for v in value]
            elif value:
                files.append(str(value))
    return files


def file_problems(files: Iterable[str], dataset_key: str | None = "main") -> list[str]:
    """One message per problem: missing files, extensions without an installed reader (one
    message per extension, naming its first file), HDF5 files without ``dataset_key``."""
    by_ext: dict[str, list[str]] = {}
    problems: list[str] = []
    for path in dict.fromkeys(files):
        if Path(path).is_dir():  # a zarr store or a folder of TIFF slices
            problems += chunked_problems(path, dataset_key)
            continue
        if not Path(path).is_file():
            problems.append(f"{path}: file not found")
            continue
        by_ext.setdefault(extension(path), []).append(path)
    for ext, paths in by_ext.items():
        more = f" (and {len(paths) - 1} more {ext or 'extension-less'} files)" * (len(paths) > 1)
        readers = READERS.get(ext)
        if readers is None:
            known = ", ".join(sorted(READERS))
            problems.append(
                f"{paths[0]}{more}: no reader for extension {ext or '(none)'!r}; "
                f"the recipe reads {known}"
            )
        elif not any(installed(r) for r in readers):
            problems.append(
                f"{paths[0]}{more}: extension {ext!r} is read by {describe(readers)}; none of "
                "them is installed"
            )
        elif readers == (H5,):
            problems += _h5_problems(paths, dataset_key)
    return problems


def chunked_problems(path: str, key: str | None) -> list[str]:
    """A directory as a volume: a zarr store holding ``key`` (metadata only), or a folder
    of TIFF slices."""
    from recipes.components.data.chunked import ZarrKeyError, is_zarr, open_zarr_array, tiff_slices

    if is_zarr(path):
        if not installed(ZARR):
            return [f"{path}: a zarr store is read by {describe([ZARR])}; it is not installed"]
        try:
            open_zarr_array(path, key)
        except ZarrKeyError as err:
            return [str(err)]
        return []
    if not tiff_slices(Path(path)):
        return [
            f"{path}: a folder, but neither a zarr store (*.zarr) nor a folder of TIFF slices "
            "(*.tif, *.tiff)"
        ]
    return []


def _h5_problems(paths: list[str], key: str | None) -> list[str]:
    """Opens each file's metadata only (no voxels) to look for the dataset."""
    import h5py

    problems = []
    for path in paths:
        try:
            with h5py.File(path, "r") as handle:
                h5_dataset_name(path, handle, key)
        except KeyError as err:
            problems.append(str(err))
        except OSError as err:
            problems.append(f"{path}: h5py cannot open it ({err})")
    return problems


def _not_generated(data_cfg: Mapping[str, Any]) -> bool:
    """A synthetic dataset whose files do not exist yet (the recipe writes them at start-up)."""
    root = Path(data_cfg["root"]) if data_cfg.get("root") else None
    return bool(data_cfg.get("synthetic")) and (root is None or not root.exists())


def check_readable(data_cfg: Mapping[str, Any], *, listing_errors: bool = False) -> list[str]:
    """Problems that would stop the recipe from reading the dataset of ``data_cfg`` (a
    composed ``cfg.data``), one readable message each; empty when every file can be read.

    Lists the cases exactly as the recipe does, then checks each file: it exists, its
    extension has a reader (which one, and which package provides it, is in the message),
    that reader is installed, and HDF5 files hold ``data.dataset_key`` (metadata only: no
    voxels are read, so it is cheap enough for planning). A dataset that cannot be listed at
    all (root absent, e.g. planned on a machine without the data) gives [] unless
    ``listing_errors``, then its one message; a synthetic dataset not generated yet gives [].
    Never raises for data problems.
    """
    if _not_generated(data_cfg):
        return []
    try:
        items, _ = read_cases(data_cfg)
    except (OSError, ValueError, KeyError) as err:
        if not listing_errors:
            return []
        return [f"data.root={data_cfg.get('root')}: {err}{_root_variable(data_cfg)}"]
    return file_problems(case_files(items), data_cfg.get("dataset_key", "main"))


def _root_variable(data_cfg: Mapping[str, Any]) -> str:
    """Which environment variable a data config's root comes from, and whether it is set:
    ``root: ${oc.env:ISLES24_ROOT,data/isles24}`` reads $ISLES24_ROOT, else the default."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(data_cfg, DictConfig):
        return ""
    raw = OmegaConf.to_container(data_cfg, resolve=False).get("root")  # type: ignore[union-attr]
    found = re.search(r"\$\{oc\.env:(\w+)", str(raw))
    if found is None:
        return ""
    var = found.group(1)
    if var in os.environ:
        return f" (data.root is ${var}: {os.environ[var]})"
    return (
        f" (data.root is ${var}, which is not set here, so its default was used: set {var} "
        "to the dataset's folder, or data.root in the matrix)"
    )


def listed_cases(data_cfg: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The dataset's cases as the recipe lists them (``data.test`` not yet held out), or None
    where they can't be listed here (no data root, a synthetic set not generated yet)."""
    if _not_generated(data_cfg):
        return None
    try:
        items, _ = read_cases(data_cfg)
    except (OSError, ValueError, KeyError):
        return None
    return items


def case_ids(data_cfg: Mapping[str, Any]) -> list[str] | None:
    """The dataset's case ids (see :func:`listed_cases`): the runner checks nested
    cross-validation's fold counts against their number."""
    items = listed_cases(data_cfg)
    return None if items is None else sorted(str(item["case"]) for item in items)
