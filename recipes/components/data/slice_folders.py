"""Convert a 2D slice dataset (PNG or NumPy slices per patient) into volumes ``data=segthor``
reads: the nnU-Net v2 raw layout, plus a datalist that keeps the slices' own train/val split.

The AI4MI course ships SegTHOR sliced (its ``slice_segthor.py``; a group's ``SEGTHOR_CLEAN``
is the same layout)::

    SRC/train/img/Patient_03_0000.png   SRC/train/gt/Patient_03_0000.png   (slice z = 0)
    SRC/val/img/...                     SRC/val/gt/...
    SRC/test/img/...                    (no gt: written to imagesTs/)
    SRC/spacing.pkl                     (optional) {patient: (dx, dy, dz)} of the CT volumes

Slices are ``<patient>_<z>.png`` or ``.npy``; a patient's slices, in z order, are stacked
back into one volume (array axes as the slices' rows, columns, then z), images and labels
alike, and written as ``DEST/imagesTr/<patient>_0000.nii.gz`` / ``labelsTr/<patient>.nii.gz``
with ``dataset.json``. ``DEST/datalist.json`` lists the ``val`` folder's patients under
``validation`` and the others under ``training``: ``data=segthor data.format=datalist``
validates on the patients the course's slicing held out, ``data=segthor`` (nnU-Net layout)
draws its own split. ``DEST/conversion.json`` says what was converted and how.

Labels: the course writes label ``k`` as ``k * 63`` (255 // (classes - 1)) so that a PNG shows
it; ``--label-scale auto`` divides by that factor when every value is a multiple of it
(plain 0..K-1 values are kept). Spacing: the slices were resized (512 -> 256 in the
course), so the slices' in-plane spacing is the volume's ``dx * original / slice size``;
with ``spacing.pkl`` (or ``--spacing``) and ``--original-size`` (512: SegTHOR's CT size,
which ``slice_segthor.py`` asserts) the NIfTI headers carry it, else 1 mm (HD95 is then in
voxels, and ``conversion.json`` says so). Train on the slices' grid with
``data.spacing=null``, as the course does.

Usage: ``python -m recipes.components.data.slice_folders SRC DEST``; ``--help`` for options.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

SEGTHOR_CLASSES = ("background", "esophagus", "heart", "trachea", "aorta")
SLICE = re.compile(r"^(?P<case>.+)_(?P<z>\d+)\.(?P<ext>png|npy)$", re.IGNORECASE)
ENDING = ".nii.gz"
VALIDATION_SPLITS = ("val", "validation")


class SliceDatasetError(ValueError):
    """The slice folders are not what the converter reads; the message names the file."""


@dataclass
class Patient:
    case: str
    split: str
    images: list[Path]
    labels: list[Path] | None  # None: an unlabelled (test) split


def _slices(folder: Path) -> dict[str, dict[int, Path]]:
    """case -> z -> file, for every slice file of ``folder``."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = SLICE.match(path.name)
        if match is None:
            if path.is_file() and not path.name.startswith("."):
                raise SliceDatasetError(
                    f"{path}: not a slice file; expected <patient>_<z>.png or .npy "
                    "(e.g. Patient_03_0042.png)"
                )
            continue
        z = int(match["z"])
        if z in found.setdefault(match["case"], {}):
            raise SliceDatasetError(f"{path}: slice {z} of {match['case']} appears twice")
        found[match["case"]][z] = path
    return found


def _ordered(case: str, by_z: dict[int, Path], folder: Path) -> list[Path]:
    zs = sorted(by_z)
    missing = sorted(set(range(zs[0], zs[-1] + 1)) - set(zs))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise SliceDatasetError(
            f"{folder}: {case} lacks slices {shown} between {zs[0]} and {zs[-1]}; a volume "
            "needs every slice"
        )
    return [by_z[z] for z in zs]


def find_patients(src: Path, image_dir: str = "img", label_dir: str = "gt") -> list[Patient]:
    """Every patient of every split folder of ``src`` (module doc), checked for pairs."""
    if not src.is_dir():
        raise SliceDatasetError(f"{src}: no such directory")
    splits = sorted(p for p in src.iterdir() if (p / image_dir).is_dir())
    if not splits:
        raise SliceDatasetError(
            f"{src}: no split folder with an {image_dir}/ folder (expected e.g. "
            f"{src}/train/{image_dir}/Patient_01_0000.png and {src}/train/{label_dir}/...)"
        )
    patients: list[Patient] = []
    seen: dict[str, str] = {}
    for split in splits:
        images = _slices(split / image_dir)
        labels = _slices(split / label_dir) if (split / label_dir).is_dir() else None
        for case in sorted(images):
            if case in seen:
                raise SliceDatasetError(f"{case} is in both {seen[case]}/ and {split.name}/")
            seen[case] = split.name
            image_files = _ordered(case, images[case], split / image_dir)
            label_files = None
            if labels is not None:
                if set(labels.get(case, {})) != set(images[case]):
                    raise SliceDatasetError(
                        f"{split / label_dir}: {case} has {len(labels.get(case, {}))} label "
                        f"slices for {len(images[case])} image slices; they must pair by z"
                    )
                label_files = _ordered(case, labels[case], split / label_dir)
            patients.append(Patient(case, split.name, image_files, label_files))
        for case in sorted(set(labels or {}) - set(images)):
            raise SliceDatasetError(f"{split / label_dir}: {case} has labels but no images")
    return patients


def read_slice(path: Path) -> np.ndarray:
    """One 2D slice; a grey image stored as RGB(A) with equal channels is read as grey."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as img:
            array = np.asarray(img)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if not (array[..., 0:1] == array[..., 1:3]).all():
            raise SliceDatasetError(f"{path}: a colour image; slices must be grey")
        array = array[..., 0]
    if array.ndim != 2:
        raise SliceDatasetError(f"{path}: expected a 2D slice, got shape {array.shape}")
    return array


def label_scale(values: np.ndarray, classes: int, requested: str, where: str) -> float:
    """The factor label values were multiplied by (module doc): 1 or 255 / (classes - 1)."""
    present = sorted(int(v) for v in np.unique(values))
    steps = [float(255 // (classes - 1)), 255 / (classes - 1)]  # 63 for SegTHOR, as the course
    candidates = [1.0, *steps] if requested == "auto" else [float(requested)]
    for scale in candidates:
        scaled = np.asarray(present) / scale
        if np.allclose(scaled, np.round(scaled)) and scaled.max(initial=0) <= classes - 1:
            return scale
    raise SliceDatasetError(
        f"{where}: label values {present} are neither 0..{classes - 1} nor multiples of "
        f"{255 // (classes - 1)} (the course's PNG encoding); give --label-scale or --classes"
    )


class _SpacingUnpickler(pickle.Unpickler):
    """``spacing.pkl`` holds a dict of tuples of numpy floats; nothing else is built."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"spacing.pkl may not build {module}.{name}")


def read_spacing_pkl(path: Path) -> dict[str, tuple[float, float, float]]:
    try:
        with open(path, "rb") as f:
            raw = _SpacingUnpickler(f).load()
        return {str(k): (float(v[0]), float(v[1]), float(v[2])) for k, v in raw.items()}
    except Exception as exc:
        raise SliceDatasetError(
            f"{path}: not a {{patient: (dx, dy, dz)}} spacing file ({exc})"
        ) from None


def _save(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    import nibabel as nib

    affine = np.diag([*map(float, spacing), 1.0])
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def convert(
    src: Path,
    dest: Path,
    classes: Sequence[str] = SEGTHOR_CLASSES,
    scale: str = "auto",
    spacing: Sequence[float] | None = None,
    original_size: int | None = 512,
    image_dir: str = "img",
    label_dir: str = "gt",
) -> dict[str, Any]:
    """Convert ``src`` into ``dest`` (module doc); returns what ``conversion.json`` holds."""
    if dest.exists() and any(dest.iterdir()):
        raise SliceDatasetError(f"{dest}: exists and is not empty; convert into a new folder")
    patients = find_patients(src, image_dir, label_dir)
    spacing_pkl = src / "spacing.pkl"
    per_case = read_spacing_pkl(spacing_pkl) if spacing is None and spacing_pkl.is_file() else {}
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    cases: dict[str, Any] = {}
    for p in patients:
        image = np.stack([read_slice(f) for f in p.images], axis=-1)
        grid = _spacing(p.case, image.shape, spacing, per_case, original_size)
        folder = "imagesTr" if p.labels is not None else "imagesTs"
        _save(image, grid["spacing"], dest / folder / f"{p.case}_0000{ENDING}")
        record: dict[str, Any] = {"split": p.split, "shape": list(image.shape), **grid}
        if p.labels is not None:
            label = np.stack([read_slice(f) for f in p.labels], axis=-1)
            if label.shape != image.shape:
                raise SliceDatasetError(
                    f"{p.labels[0].parent}: {p.case}'s labels are {label.shape[:2]} slices, its "
                    f"images {image.shape[:2]}"
                )
            factor = label_scale(label, len(classes), scale, f"{p.labels[0].parent}/{p.case}_*")
            label = np.round(label / factor).astype(np.uint8)
            _save(label, grid["spacing"], dest / "labelsTr" / f"{p.case}{ENDING}")
            record["label_scale"] = factor
            entry = {
                "image": f"imagesTr/{p.case}_0000{ENDING}",
                "label": f"labelsTr/{p.case}{ENDING}",
            }
            key = "validation" if p.split.lower() in VALIDATION_SPLITS else "training"
            datalist[key].append(entry)
        cases[p.case] = record
    labelled = [p for p in patients if p.labels is not None]
    meta = {
        "name": src.name,
        "description": f"converted from the 2D slices in {src} (recipes.components.data."
        "slice_folders)",
        "channel_names": {"0": "CT"},
        "labels": {name: value for value, name in enumerate(classes)},
        "numTraining": len(labelled),
        "file_ending": ENDING,
    }
    (dest / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    if not datalist["validation"]:
        del datalist["validation"]  # no val/ folder: the recipe draws its own split
    (dest / "datalist.json").write_text(json.dumps(datalist, indent=2) + "\n")
    report = {"source": str(src.absolute()), "classes": list(classes), "cases": cases}
    (dest / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _spacing(
    case: str,
    shape: Sequence[int],
    given: Sequence[float] | None,
    per_case: dict[str, tuple[float, float, float]],
    original_size: int | None,
) -> dict[str, Any]:
    """The slices' voxel size and where it came from."""
    if given is not None:
        return {"spacing": [float(s) for s in given], "spacing_from": "--spacing"}
    if case not in per_case:
        return {"spacing": [1.0, 1.0, 1.0], "spacing_from": "unknown (1 mm assumed)"}
    dx, dy, dz = per_case[case]
    if original_size:
        dx, dy = dx * original_size / shape[0], dy * original_size / shape[1]
    return {
        "spacing": [dx, dy, dz],
        "spacing_from": f"spacing.pkl, in-plane x {original_size} / slice size"
        if original_size
        else "spacing.pkl, as given",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.components.data.slice_folders",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("src", type=Path, help="the folder holding train/, val/ (and test/)")
    parser.add_argument("dest", type=Path, help="the dataset to write (data.root)")
    parser.add_argument("--classes", nargs="+", default=list(SEGTHOR_CLASSES))
    parser.add_argument("--label-scale", default="auto", help="auto | the factor (e.g. 63)")
    parser.add_argument(
        "--spacing", type=float, nargs=3, help="the slices' voxel size (x y z, mm) for all"
    )
    parser.add_argument(
        "--original-size",
        type=int,
        default=512,
        help="in-plane size of the volumes spacing.pkl describes (0: spacing as given)",
    )
    parser.add_argument("--image-dir", default="img")
    parser.add_argument("--label-dir", default="gt")
    args = parser.parse_args(argv)
    try:
        report = convert(
            args.src,
            args.dest,
            args.classes,
            args.label_scale,
            args.spacing,
            args.original_size or None,
            args.image_dir,
            args.label_dir,
        )
    except (SliceDatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cases = report["cases"].values()
    unknown = sum(1 for c in cases if c["spacing_from"].startswith("unknown"))
    print(f"{len(report['cases'])} patients written to {args.dest}")
    if unknown:
        print(f"warning: no spacing for {unknown} patients: 1 mm assumed (see conversion.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
