"""A tiny synthetic SegTHOR as the AI4MI course ships it: 2D PNG slices per patient.

Each patient is a stack of axial slices of a chest-like ellipse holding the four SegTHOR
organs as simple shapes (1 esophagus: a thin tube behind 3 the trachea, which ends part-way
up; 2 the heart: a large blob over the lower slices; 4 the aorta: a tube beside it), with
patient-to-patient jitter of sizes and positions and noise. Written in the course's layout
(``slice_folders.py``): ``{train,val}/{img,gt}/<patient>_<z>.png`` with labels times 63, and
``spacing.pkl``. ``ensure_segthor_demo`` converts it, with the converter a user runs on the
real slices, into the dataset ``data=segthor_demo`` trains on. Not CT and not anatomy: a
plumbing check only.

``python -m recipes.components.data.segthor_demo_data --out DIR`` writes the slices only.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np

from recipes.components.data.demo_data import generate_once
from recipes.components.data.slice_folders import convert

MARKER = "synthetic.json"
LABEL_STEP = 63  # the course's PNG encoding of label k


def make_patient(seed: int, index: int, size: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, label 0..4), both ``size x size x depth``."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.zeros((size, size, depth), np.float32)
    label = np.zeros((size, size, depth), np.uint8)
    jitter = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731
    cy, cx = 0.5 + jitter(0.03), 0.5 + jitter(0.03)
    # (y, x, radius) as fractions of the slice: a few pixels each at the demo's 48 x 48
    heart = (cy + 0.1 + jitter(0.03), cx - 0.08 + jitter(0.03), 0.18 + jitter(0.03))
    aorta = (cy - 0.02 + jitter(0.02), cx + 0.18 + jitter(0.02), 0.08 + jitter(0.01))
    trachea = (cy - 0.18 + jitter(0.02), cx + jitter(0.02), 0.07 + jitter(0.01))
    esophagus = (trachea[0] + 0.14, trachea[1] + 0.03, 0.055)
    heart_top = int(depth * (0.55 + jitter(0.1)))
    trachea_bottom = int(depth * (0.45 + jitter(0.1)))

    def disc(y: float, x: float, r: float) -> np.ndarray:
        return (yy - y) ** 2 + (xx - x) ** 2 < r**2

    for z in range(depth):
        body = ((yy - cy) / 0.42) ** 2 + ((xx - cx) / 0.46) ** 2 < 1
        image[..., z][body] = 90
        shapes = [(4, aorta, 190), (1, esophagus, 125)]
        if z < heart_top:
            shapes.append((2, heart, 150))
        if z >= trachea_bottom:
            shapes.append((3, trachea, 25))
        for value, (y, x, r), intensity in shapes:
            mask = disc(y, x, r)
            image[..., z][mask] = intensity
            label[..., z][mask] = value
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_slices(
    out: Path, patients: int = 8, val: int = 2, size: int = 48, depth: int = 12, seed: int = 0
) -> None:
    """The course layout under ``out`` (module doc); the last ``val`` patients validate."""
    from PIL import Image

    spacing = {}
    for index in range(patients):
        case = f"Patient_{index + 1:02d}"
        split = "val" if index >= patients - val else "train"
        image, label = make_patient(seed, index, size, depth)
        for sub in ("img", "gt"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
        for z in range(depth):
            Image.fromarray(image[..., z]).save(out / split / "img" / f"{case}_{z:04d}.png")
            gt = (label[..., z] * LABEL_STEP).astype(np.uint8)
            Image.fromarray(gt).save(out / split / "gt" / f"{case}_{z:04d}.png")
        # As nibabel's zooms: numpy float32 (the converter reads them without building
        # anything else from the pickle).
        spacing[case] = tuple(np.float32(v) for v in (0.9, 0.9, 2.5))
    with open(out / "spacing.pkl", "wb") as f:
        pickle.dump(spacing, f, pickle.HIGHEST_PROTOCOL)
    meta = {"patients": patients, "val": val, "size": size, "depth": depth, "seed": seed}
    (out / MARKER).write_text(json.dumps(meta) + "\n")


def ensure_segthor_demo(root: Path) -> Path:
    """The converted demo at ``root`` (its slices beside it, ``<root>_slices``), generated
    once; concurrent cells share one copy (``demo_data.generate_once``)."""
    root = Path(root)
    slices = root.parent / f"{root.name}_slices"
    generate_once(slices, MARKER, write_slices)
    return generate_once(root, "datalist.json", lambda out: convert(slices, out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/segthor_demo_slices"))
    parser.add_argument("--patients", type=int, default=8)
    args = parser.parse_args(argv)
    generate_once(args.out, MARKER, lambda out: write_slices(out, patients=args.patients))
    print(f"synthetic SegTHOR slices at {args.out}")


if __name__ == "__main__":
    main()
