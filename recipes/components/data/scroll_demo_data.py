"""A small synthetic scroll scan with sparse ink, written as zarr stores and as folders of
TIFF slices (the two chunked formats of ``data/chunked.py``).

Not a CT scan: a stand-in with the features that matter to the ink-detection pipeline.
Papyrus sheets are thin (3 voxels) bright layers stacked along z, each a gently waving
surface; ink sits on a sheet's upper face as sparse strokes, 2 voxels thick, brighter than
bare papyrus; the rest is dark, noisy air. The label is the ink: a few percent of the
volume, so Dice on it is the thin-structure problem the group faces, at CPU scale.

Each volume exists twice, with the same voxels, in ``root``::

    scroll{i}_volume.zarr   scroll{i}_ink.zarr      zarr arrays, chunks 16 x 32 x 32
    scroll{i}_volume/       scroll{i}_ink/          one uncompressed TIFF per z: 00.tif, ...

(``val_scroll{i}_*`` for validation.) Stored (z, y, x), uint8. Deterministic per (seed,
volume). Run ``python -m recipes.components.data.scroll_demo_data --out data/demo_scroll``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from recipes.components.data.demo_data import demo_main, generate_once

SHAPE = (48, 96, 96)  # z, y, x voxels
CHUNKS = (16, 32, 32)
MARKER = "synthetic.json"
DESCRIPTION = "SYNTHETIC scroll sheets with sparse ink, not a CT scan"
SHEET_GAP = 11  # voxels between sheets along z
AIR, PAPYRUS, INK = 35.0, 130.0, 215.0


def _strokes(rng: np.random.Generator, shape: tuple[int, int], cover: float) -> np.ndarray:
    """A (y, x) mask of short thick strokes (letters, roughly) covering about ``cover``."""
    mask = np.zeros(shape, bool)
    yy, xx = np.indices(shape)
    while mask.mean() < cover:
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        angle, length = rng.uniform(0, np.pi), rng.uniform(6, 18)
        dy, dx = np.sin(angle), np.cos(angle)
        # Distance to the segment from (y0, x0) along (dy, dx).
        t = np.clip((yy - y0) * dy + (xx - x0) * dx, 0, length)
        mask |= np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)) <= rng.uniform(1.5, 2.5)
    return mask


def make_volume(seed: int, index: int, shape: tuple[int, int, int] = SHAPE) -> tuple:
    """(image uint8, ink label uint8), both (z, y, x)."""
    rng = np.random.default_rng([seed, index])
    nz, ny, nx = shape
    z = np.arange(nz, dtype=np.float32)[:, None, None]
    image = np.full(shape, AIR, np.float32)
    ink = np.zeros(shape, np.uint8)
    yy, xx = np.indices((ny, nx), dtype=np.float32)
    for base in np.arange(rng.uniform(2, min(7, nz - 6)), nz - 4, SHEET_GAP):
        wave = rng.uniform(1.0, 2.5) * np.sin(
            2 * np.pi * xx / rng.uniform(40, 90) + rng.uniform(0, 6)
        )
        wave += rng.uniform(0.5, 1.5) * np.sin(
            2 * np.pi * yy / rng.uniform(40, 90) + rng.uniform(0, 6)
        )
        surface = (base + wave)[None]  # the sheet's lower face, per (y, x)
        sheet = (z >= surface) & (z < surface + 3)
        image[sheet] = PAPYRUS
        strokes = _strokes(rng, (ny, nx), cover=rng.uniform(0.12, 0.2))[None]
        inked = (z >= surface + 1) & (z < surface + 3) & strokes
        image[inked] = INK
        ink[inked] = 1
    image = ndimage.gaussian_filter(image, sigma=0.6) + rng.normal(0, 14, shape)
    return np.clip(image, 0, 255).astype(np.uint8), ink


def _write_zarr(path: Path, array: np.ndarray, chunks: tuple[int, ...] = CHUNKS) -> None:
    import zarr

    chunks = tuple(min(c, s) for c, s in zip(chunks, array.shape, strict=True))
    out = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype)
    out[...] = array


def _write_slices(folder: Path, array: np.ndarray) -> None:
    import tifffile

    folder.mkdir()
    width = max(2, len(str(array.shape[0] - 1)))
    for z, plane in enumerate(array):
        tifffile.imwrite(folder / f"{z:0{width}d}.tif", plane)


def write_dataset(
    out: Path, train: int = 2, val: int = 1, seed: int = 0, shape: tuple[int, int, int] = SHAPE
) -> None:
    """Write the dataset into ``out`` (which must exist and be empty)."""
    names = [f"scroll{i + 1}" for i in range(train)] + [f"val_scroll{i + 1}" for i in range(val)]
    ink_share = []
    for index, name in enumerate(names):
        image, ink = make_volume(seed, index, shape)
        ink_share.append(float(ink.mean()))
        for role, array in (("volume", image), ("ink", ink)):
            _write_zarr(out / f"{name}_{role}.zarr", array)
            _write_slices(out / f"{name}_{role}", array)
    meta = {
        "description": DESCRIPTION,
        "shape_zyx": list(shape),
        "chunks_zyx": list(CHUNKS),
        "ink_share": ink_share,
        "train": train,
        "val": val,
        "seed": seed,
    }
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")


def ensure_scroll_demo(
    root: Path, train: int = 2, val: int = 1, seed: int = 0, shape: tuple[int, int, int] = SHAPE
) -> Path:
    """Generate the dataset at ``root`` unless it is there (atomically: see generate_once)."""
    return generate_once(root, MARKER, lambda out: write_dataset(out, train, val, seed, shape))


def main(argv: list[str] | None = None) -> None:
    options = {"train": 2, "val": 1, "seed": 0}
    demo_main(
        argv, __doc__, "data/demo_scroll", options, ensure_scroll_demo, "synthetic scroll dataset"
    )


if __name__ == "__main__":
    main()
