"""A small synthetic serial-section EM dataset of large vesicles, in the ``h5`` layout.

Not microscope data: a stand-in with the features that matter to the pipeline, so the
``em_instance`` task runs anywhere. Each volume is a stack of sections at 30 nm (z) x 8 nm
(y, x), as the hydra-lv study images them, so a spherical vesicle spans 3-4x more voxels
in-plane than in z. Vesicles are membrane-bounded: a dark ring around a lighter lumen, in a
textured cytoplasm crossed by other dark membranes (distractors the network must not call
vesicles); some vesicles touch, so instances must be separated, not just thresholded. The
mask covers the annotated part of each volume: vesicles outside it are imaged but left
unlabelled, as in partly proofread data, and only the mask may count.

Files follow PyTorch Connectomics' naming, dataset ``main`` in each file::

    vol{1..N}_im.h5  vol{i}_vesicle_ins.h5  vol{i}_mask.h5       (training)
    vol_val{1..M}_im.h5  vol_val{i}_vesicle_ins.h5  vol_val{i}_mask.h5
    test/vol_test{1..K}_im.h5  ..._vesicle_ins.h5  ..._mask.h5    (held out: data.test)

Deterministic per (seed, volume) with ``numpy.random.default_rng``. Run
``python -m recipes.components.data.em_demo_data --out data/demo_em``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from recipes.components.data.demo_data import demo_main, generate_once

VOXEL_NM = (30.0, 8.0, 8.0)  # z, y, x
SHAPE = (16, 80, 80)  # z, y, x voxels
MARKER = "synthetic.json"
DESCRIPTION = "SYNTHETIC EM-like vesicles, not microscope data"


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def make_volume(
    seed: int, index: int, shape: tuple[int, int, int] = SHAPE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8, instances uint16, mask uint8), all (z, y, x)."""
    rng = np.random.default_rng([seed, index])
    grid = (
        np.indices(shape, dtype=np.float32) * np.asarray(VOXEL_NM, np.float32)[:, None, None, None]
    )
    extent = np.asarray(shape) * np.asarray(VOXEL_NM)

    # Vesicles: radius 56-96 nm; centres at least 0.9 x the sum of radii apart, so some touch.
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for _ in range(200):
        if len(centres) >= int(rng.integers(8, 13)):
            break
        radius = float(rng.uniform(56.0, 96.0))
        centre = rng.uniform(0, 1, size=3) * extent
        if all(
            np.linalg.norm(centre - c) >= 0.9 * (radius + r)
            for c, r in zip(centres, radii, strict=True)
        ):
            centres.append(centre)
            radii.append(radius)

    # Each voxel belongs to the vesicle it is relatively deepest in (a partition of overlaps).
    depth = np.full(shape, np.inf, dtype=np.float32)
    instances = np.zeros(shape, dtype=np.uint16)
    membrane = np.zeros(shape, dtype=bool)
    for label, (centre, radius) in enumerate(zip(centres, radii, strict=True), start=1):
        distance = np.sqrt(((grid - centre[:, None, None, None].astype(np.float32)) ** 2).sum(0))
        relative = distance / radius
        inside = (relative <= 1.0) & (relative < depth)
        instances[inside] = label
        depth = np.where(inside, relative, depth)
        membrane |= (distance <= radius) & (distance >= radius - 12.0)  # ~12 nm bilayer

    # Cytoplasm texture and distractor membranes (thin sheets of a smooth random field).
    image = 150.0 + 12.0 * _smooth(rng, shape, (0.6, 3.0, 3.0))
    sheets = np.abs(_smooth(rng, shape, (1.0, 8.0, 8.0))) < 0.06
    image[sheets] = 85.0
    image[instances > 0] = 175.0  # lumen
    image[membrane] = 55.0
    image = ndimage.gaussian_filter(image, sigma=(0.3, 0.8, 0.8))
    image += rng.normal(scale=10.0, size=shape)

    # Annotated region: the volume minus a band along one in-plane edge (cut through vesicles).
    mask = np.ones(shape, dtype=np.uint8)
    band = int(rng.integers(shape[2] // 8, shape[2] // 4))
    mask[:, :, shape[2] - band :] = 0
    instances = np.where(mask > 0, instances, 0).astype(np.uint16)
    return np.clip(image, 0, 255).astype(np.uint8), instances, mask


def _save(path: Path, array: np.ndarray) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("main", data=array, compression="gzip")


def write_dataset(out: Path, train: int = 4, val: int = 2, seed: int = 0, test: int = 1) -> None:
    """Write the dataset into ``out`` (which must exist and be empty)."""
    names = [f"vol{i + 1}" for i in range(train)] + [f"vol_val{i + 1}" for i in range(val)]
    names += [f"test/vol_test{i + 1}" for i in range(test)]
    (out / "test").mkdir(exist_ok=True)
    for index, name in enumerate(names):
        image, instances, mask = make_volume(seed, index)
        _save(out / f"{name}_im.h5", image)
        _save(out / f"{name}_vesicle_ins.h5", instances)
        _save(out / f"{name}_mask.h5", mask)
    meta = {
        "description": DESCRIPTION,
        "voxel_size_nm_zyx": list(VOXEL_NM),
        "shape_zyx": list(SHAPE),
        "train": train,
        "val": val,
        "test": test,
        "seed": seed,
    }
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")


def ensure_em_demo_dataset(
    root: Path, train: int = 4, val: int = 2, seed: int = 0, test: int = 1
) -> Path:
    """Generate the dataset at ``root`` unless it is there (atomically: see generate_once);
    one generated before it had test volumes gets them (a folder renamed into place)."""
    generate_once(
        root, MARKER, lambda out: write_dataset(out, train=train, val=val, seed=seed, test=test)
    )
    meta = json.loads((root / MARKER).read_text())
    if test and "test" not in meta and not (root / "test").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".test.tmp-", dir=root))
        for i in range(test):
            image, instances, mask = make_volume(seed, meta["train"] + meta["val"] + i)
            for suffix, array in (("im", image), ("vesicle_ins", instances), ("mask", mask)):
                _save(tmp / f"vol_test{i + 1}_{suffix}.h5", array)
        try:
            os.rename(tmp, root / "test")
        except OSError:  # another process was first
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> None:
    options = {"train": 4, "val": 2, "test": 1, "seed": 0}
    demo_main(
        argv, __doc__, "data/demo_em", options, ensure_em_demo_dataset, "synthetic EM dataset"
    )


if __name__ == "__main__":
    main()
