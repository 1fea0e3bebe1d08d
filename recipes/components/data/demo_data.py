"""A small synthetic stand-in for ISLES'24 perfusion data, so the recipe runs anywhere.

Each case has two channels shaped like the CBF and TMAX perfusion maps: healthy brain tissue
has CBF ~ 50 and TMAX ~ 2 with smooth spatial variation; 1-3 ellipsoid infarct cores have low
CBF (15-25) and high TMAX (8-12) and sit inside a hypoperfused "penumbra" whose TMAX is also
raised (~6) but whose CBF is almost normal, so that TMAX alone does not give the answer.
Gaussian noise and mild smoothing keep the task from being a threshold.

The output is an nnU-Net v2 raw dataset (``imagesTr/{case}_{XXXX}.nii.gz``, ``labelsTr/``,
``dataset.json``), byte-identical for a given seed: every case draws from its own
``default_rng([seed, case])`` and nibabel writes gzip headers without timestamps.

Run ``python -m recipes.components.data.demo_data --out data/demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

CHANNELS = ("CBF", "TMAX")
FILE_ENDING = ".nii.gz"
DESCRIPTION = "SYNTHETIC demo data: ellipsoid lesions, not patient data"


def _ellipsoid(
    grid: np.ndarray, center: np.ndarray, axes: np.ndarray, rot: np.ndarray
) -> np.ndarray:
    """Boolean mask of a rotated ellipsoid; grid is (3, X, Y, Z) voxel coordinates."""
    offset = grid - center[:, None, None, None]
    local = np.einsum("ij,jxyz->ixyz", rot.T, offset)  # into the ellipsoid's own frame
    return np.sum((local / axes[:, None, None, None]) ** 2, axis=0) <= 1.0


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std, spatially smooth random field (low-frequency tissue variation)."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def make_case(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One case: images (2, size, size, size) float32 [CBF, TMAX] and a uint8 lesion mask."""
    rng = np.random.default_rng([seed, index])
    shape = (size, size, size)
    grid = np.indices(shape, dtype=np.float64)
    center = np.full(3, (size - 1) / 2.0)

    # Skull-stripped brain: an ellipsoid with zeros outside, as in real perfusion maps.
    brain_axes = size * np.array([0.42, 0.46, 0.38]) * rng.uniform(0.95, 1.05, size=3)
    brain = _ellipsoid(grid, center, brain_axes, np.eye(3))

    cbf = 50.0 + 8.0 * _smooth_field(rng, shape, sigma=size / 8)
    tmax = 2.0 + 0.5 * _smooth_field(rng, shape, sigma=size / 8)
    label = np.zeros(shape, dtype=bool)

    for _ in range(int(rng.integers(1, 4))):
        # Centre well inside the brain so that most of the lesion is tissue.
        while True:
            lesion_center = center + rng.uniform(-1, 1, size=3) * brain_axes * 0.6
            if _ellipsoid(lesion_center[:, None, None, None], center, brain_axes, np.eye(3)):
                break
        axes = size * rng.uniform(0.07, 0.17, size=3)
        rot = _random_rotation(rng)
        penumbra = _ellipsoid(grid, lesion_center, axes * rng.uniform(1.4, 1.8), rot) & brain
        core = _ellipsoid(grid, lesion_center, axes, rot) & brain
        cbf[penumbra & ~label] = rng.uniform(38.0, 45.0)
        tmax[penumbra & ~label] = rng.uniform(5.0, 7.0)
        cbf[core] = rng.uniform(15.0, 25.0)
        tmax[core] = rng.uniform(8.0, 12.0)
        label |= core

    cbf += rng.normal(scale=10.0, size=shape)
    tmax += rng.normal(scale=2.0, size=shape)
    images = np.stack([cbf, tmax])
    images = ndimage.gaussian_filter(images, sigma=(0, 0.8, 0.8, 0.8), mode="nearest")
    images = np.clip(images, 0.0, None) * brain  # perfusion values are non-negative
    return images.astype(np.float32), label.astype(np.uint8)


def _save_nifti(array: np.ndarray, path: Path) -> None:
    """Save with a 1 mm isotropic RAS affine (identity)."""
    img = nib.Nifti1Image(array, affine=np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(np.eye(4), code=1)
    img.set_sform(np.eye(4), code=1)
    nib.save(img, path)


def write_dataset(out: Path, cases: int = 16, size: int = 48, seed: int = 0) -> None:
    """Write the dataset into ``out`` (which must exist and be empty)."""
    (out / "imagesTr").mkdir()
    (out / "labelsTr").mkdir()
    for index in range(cases):
        case = f"demo_{index:03d}"
        images, label = make_case(seed, index, size)
        for channel, image in enumerate(images):
            _save_nifti(image, out / "imagesTr" / f"{case}_{channel:04d}{FILE_ENDING}")
        _save_nifti(label, out / "labelsTr" / f"{case}{FILE_ENDING}")
    meta = {
        "name": "demo",
        "description": DESCRIPTION,
        "channel_names": {str(i): name for i, name in enumerate(CHANNELS)},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": cases,
        "file_ending": FILE_ENDING,
        "synthetic": {"seed": seed, "size": size},
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def generate_once(root: Path, marker: str, write: Callable[[Path], None]) -> Path:
    """Run ``write(dir)`` to generate a dataset at ``root`` unless ``root/marker`` exists.

    Generation happens in a temporary directory beside ``root`` that is renamed into place,
    so concurrent callers (parallel runs of a matrix) never see half a dataset: the first
    rename wins and later ones discard their copy.
    """
    root = Path(root)
    if (root / marker).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, root)  # atomic; also replaces an empty directory
        except OSError:
            if not (root / marker).exists():
                raise RuntimeError(f"{root} exists but holds no {marker}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_demo_dataset(root: Path, cases: int = 16, size: int = 48, seed: int = 0) -> Path:
    """Generate the demo dataset at ``root`` unless ``root/dataset.json`` already exists."""
    return generate_once(
        root, "dataset.json", lambda out: write_dataset(out, cases=cases, size=size, seed=seed)
    )


def demo_main(
    argv: list[str] | None,
    doc: str | None,
    out: str,
    options: dict[str, int],
    ensure: Callable[..., Path],
    what: str,
) -> None:
    """A demo-data module's command line: ``--out`` (default ``out``) and the integer
    ``options`` (name: default), passed to ``ensure`` by name; prints where ``what`` is."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path(out))
    for name, default in options.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = vars(parser.parse_args(argv))
    root = ensure(args.pop("out"), **args)
    print(f"{what} at {root}")


def main(argv: list[str] | None = None) -> None:
    options = {"cases": 16, "size": 48, "seed": 0}
    demo_main(argv, __doc__, "data/demo", options, ensure_demo_dataset, "demo dataset")


if __name__ == "__main__":
    main()
