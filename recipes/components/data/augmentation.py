"""Augmentation presets (``cfg.augmentation``), all MONAI dictionary transforms.

Each preset is a list of probabilities; a transform whose probability key is absent or 0
is left out, so ``none`` is empty and ``some`` is exactly the recipe's original set (flips +
intensity scale/shift). Spatial transforms apply to image and label alike (labels with
nearest interpolation); intensity transforms to the image only. Axis 2 is z (RAS order).
2D patches (the ``dims=2d`` variant) get the same presets in-plane: flips on both axes, one
rotation angle, 90-degree rotations of the slice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.transforms import (
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

KEYS = ["image", "label"]
PRESETS = ("none", "some", "aggressive", "em")
SOME: dict[str, Any] = {"name": "some", "flip_prob": 0.5, "intensity_prob": 0.5}


def augment_transforms(aug: Mapping[str, Any] | None, spatial_dims: int = 3) -> list[MapTransform]:
    """The random transforms of a preset for 3D or 2D patches; ``None`` means ``some``."""
    aug = SOME if aug is None else aug
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if aug["name"] not in PRESETS:
        raise ValueError(f"unknown augmentation {aug['name']!r}; choose one of {PRESETS}")
    p = {k: float(v) for k, v in aug.items() if k.endswith("_prob") and v}
    out: list[MapTransform] = []
    if "affine_prob" in p:
        rot, scale = float(aug["rotate_range"]), float(aug["scale_range"])
        out.append(
            RandAffined(
                KEYS,
                prob=p["affine_prob"],
                # 2D has a single rotation angle (in-plane); 3D one per axis.
                rotate_range=(rot,) if spatial_dims == 2 else (rot, rot, rot),
                scale_range=(scale,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if "flip_prob" in p:
        out += [
            RandFlipd(KEYS, prob=p["flip_prob"], spatial_axis=axis) for axis in range(spatial_dims)
        ]
    if "rotate90_prob" in p:
        # In-plane (x, y) only: z may have another spacing (EM, thick-slice MR).
        out.append(RandRotate90d(KEYS, prob=p["rotate90_prob"], spatial_axes=(0, 1)))
    if "intensity_prob" in p:
        out += [
            RandScaleIntensityd("image", factors=0.1, prob=p["intensity_prob"]),
            RandShiftIntensityd("image", offsets=0.1, prob=p["intensity_prob"]),
        ]
    if "gamma_prob" in p:
        out.append(RandAdjustContrastd("image", prob=p["gamma_prob"], gamma=(0.7, 1.5)))
    if "histogram_shift_prob" in p:
        out.append(RandHistogramShiftd("image", prob=p["histogram_shift_prob"]))
    if "noise_prob" in p:
        out.append(RandGaussianNoised("image", prob=p["noise_prob"], std=0.1))
    if "smooth_prob" in p:
        out.append(RandGaussianSmoothd("image", prob=p["smooth_prob"]))
    return out
