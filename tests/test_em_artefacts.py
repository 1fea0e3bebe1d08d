"""The serial-section EM artefacts, each checked for what it does to a synthetic stack: the
misaligned section moved by the drawn offset, the missing section blank or repeated, the
motion blur along the drawn direction only; and their seeding per (seed, epoch, case)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from recipes.components.data.augmentation import augment_transforms
from recipes.components.data.em_artefacts import (
    RandMisalignmentd,
    RandMissingSectiond,
    RandMotionBlurd,
    line_kernel,
)
from recipes.components.data.seeding import item_seed

X, Y, Z = 24, 20, 8


def _stack(seed: int = 0) -> dict[str, torch.Tensor]:
    """A (1, X, Y, Z) image of unique values, an instance label and a full mask."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.permutation(X * Y * Z).reshape(1, X, Y, Z).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, 5, size=(1, X, Y, Z)).astype(np.float32))
    return {"image": image, "label": label, "mask": torch.ones(1, X, Y, Z)}


def _moved(before: torch.Tensor, after: torch.Tensor, dx: int, dy: int) -> bool:
    """``after`` holds ``before`` moved by (dx, dy) wherever both are defined."""
    src = before[:, max(-dx, 0) : X - max(dx, 0), max(-dy, 0) : Y - max(dy, 0)]
    dst = after[:, max(dx, 0) : X - max(-dx, 0), max(dy, 0) : Y - max(-dy, 0)]
    return bool(torch.equal(src, dst))


@pytest.mark.parametrize("slip", [True, False])
def test_misalignment_moves_the_drawn_sections_by_the_drawn_offset(slip: bool) -> None:
    t = RandMisalignmentd(["image", "label", "mask"], prob=1.0, max_shift=5, slip_ratio=float(slip))
    data = _stack()
    out = t.set_random_state(seed=3)(data)
    dx, dy = t.shift
    assert t.slip is slip and (dx, dy) != (0, 0) and 1 <= t.z < Z
    moved = [t.z] if slip else list(range(t.z, Z))
    assert t.sections == moved
    for z in range(Z):
        for key in ("image", "label"):
            if z in moved:
                assert _moved(data[key][..., z], out[key][..., z], dx, dy), (key, z)
                assert not torch.equal(out[key][..., z], data[key][..., z])
            else:
                assert torch.equal(out[key][..., z], data[key][..., z]), (key, z)
    # The strip a shift uncovers is not data: the mask drops it, the image repeats its edge.
    mask = out["mask"][0, :, :, moved[0]]
    uncovered = mask == 0
    assert int(uncovered.sum()) == X * Y - (X - abs(dx)) * (Y - abs(dy))
    strip = slice(0, dx) if dx > 0 else slice(X + dx, X)
    if dx:
        edge = out["image"][0, dx if dx > 0 else X + dx - 1, :, moved[0]]
        assert torch.equal(out["image"][0, strip, :, moved[0]][0], edge)
    assert torch.equal(
        out["mask"][..., [z for z in range(Z) if z not in moved]],
        torch.ones(1, X, Y, Z - len(moved)),
    )


@pytest.mark.parametrize("mode", ["blank", "repeat"])
def test_missing_section_is_blank_or_a_repeat_of_its_neighbour(mode: str) -> None:
    t = RandMissingSectiond("image", prob=1.0, max_sections=2, mode=mode)
    data = _stack(1)
    out = t.set_random_state(seed=5)(data)
    assert len(t.sections) in (1, 2) and t.repeated == [mode == "repeat"] * len(t.sections)
    image = out["image"][0]
    for z in range(Z):
        if z not in t.sections:
            assert torch.equal(image[..., z], data["image"][0, ..., z])
        elif mode == "blank":
            assert torch.all(image[..., z] == data["image"].min())  # one value: black
        else:
            source = z - 1 if z > 0 else z + 1
            assert torch.equal(image[..., z], data["image"][0, ..., source])
    assert torch.equal(out["label"], data["label"])  # the structures are still there


def test_motion_blur_spreads_along_the_drawn_direction_only() -> None:
    t = RandMotionBlurd("image", prob=1.0, max_sections=2, kernel_size=(9, 9))
    image = torch.zeros(1, 41, 41, Z)
    image[0, 20, 20, :] = 1.0  # an impulse in every section
    out = t.set_random_state(seed=11)({"image": image.clone()})["image"][0]
    assert t.length == 9 and 1 <= len(t.sections) <= 2
    direction = np.array([math.cos(t.angle), math.sin(t.angle)])
    for z in range(Z):
        section = out[..., z]
        if z not in t.sections:
            assert torch.equal(section, image[0, ..., z])
            continue
        assert section.sum().item() == pytest.approx(1.0, abs=1e-5)  # blur keeps the mass
        xs, ys = np.nonzero(section.numpy() > 1e-6)
        offsets = np.stack([xs - 20, ys - 20], axis=1).astype(float)
        along = offsets @ direction
        across = offsets @ np.array([-direction[1], direction[0]])
        assert np.abs(across).max() <= 1.0  # a line, one voxel wide at most
        assert np.abs(along).max() >= 3.0  # ... of the kernel's length along the angle
    # A horizontal kernel blurs along x and leaves y untouched.
    kernel = line_kernel(5, 0.0)
    assert torch.count_nonzero(kernel[:, 2]) == 5 and torch.count_nonzero(kernel[2, :]) == 1


def test_artefacts_are_seeded_per_seed_epoch_and_case() -> None:
    """The em preset in a Compose, seeded as the data pipeline seeds it: the same (seed,
    epoch, case) gives the same artefacts, another epoch other ones (exact resume)."""
    aug = {
        "name": "em",
        "misalignment_prob": 1.0,
        "missing_section_prob": 1.0,
        "motion_blur_prob": 1.0,
    }
    transform = Compose(augment_transforms(aug, 3, ["image", "label", "mask"]))
    assert [type(t).__name__ for t in transform.transforms] == [
        "RandMisalignmentd",
        "RandMissingSectiond",
        "RandMotionBlurd",
    ]

    def run(epoch: int) -> dict[str, torch.Tensor]:
        transform.set_random_state(seed=item_seed(0, epoch, 3))
        return transform(_stack(2))

    first, again, other = run(4), run(4), run(5)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["image"], other["image"])
    assert augment_transforms(aug, 2, ["image", "label"]) == []  # a 2D patch is one section
