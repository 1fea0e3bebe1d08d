"""Augmentation presets (``cfg.augmentation``), all MONAI dictionary transforms.

Each preset is a list of probabilities; a transform whose probability key is absent or 0
is left out, so ``none`` is empty and ``some`` is exactly the recipe's original set (flips +
intensity scale/shift). Spatial transforms apply to image and label alike (labels with
nearest interpolation); intensity transforms to the image only. Axis 2 is z (RAS order).
2D patches (the ``dims=2d`` variant) get the same presets in-plane: flips on both axes, one
rotation angle, 90-degree rotations of the slice.

Serial-section EM artefacts (``data/em_artefacts.py``; 3D only, as they act per section):
``misalignment_prob`` (``misalignment_max_shift`` voxels, ``misalignment_slip_ratio``),
``missing_section_prob`` (``missing_section_max``, ``missing_section_mode``) and
``motion_blur_prob`` (``motion_blur_sections``, ``motion_blur_kernel`` [low, high]).
``affine_inplane: true`` rotates about z only and scales x and y only (anisotropic stacks).
``keys``: the spatial keys (image, label and a mask when the dataset has one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

from recipes.components.data.em_artefacts import (
    RandMisalignmentd,
    RandMissingSectiond,
    RandMotionBlurd,
)

KEYS = ["image", "label"]
PRESETS = ("none", "some", "aggressive", "em")
SOME: dict[str, Any] = {"name": "some", "flip_prob": 0.5, "intensity_prob": 0.5}


def augment_transforms(
    aug: Mapping[str, Any] | None, spatial_dims: int = 3, keys: Sequence[str] = KEYS
) -> list[MapTransform]:
    """The random transforms of a preset for 3D or 2D patches; ``None`` means ``some``."""
    aug = SOME if aug is None else aug
    spatial = list(keys)  # image first, then label (and mask): nearest interpolation
    nearest = ("nearest",) * (len(spatial) - 1)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if aug["name"] not in PRESETS:
        raise ValueError(f"unknown augmentation {aug['name']!r}; choose one of {PRESETS}")
    p = {k: float(v) for k, v in aug.items() if k.endswith("_prob") and v}
    out: list[MapTransform] = []
    if "affine_prob" in p:
        rot, scale = float(aug["rotate_range"]), float(aug["scale_range"])
        inplane = bool(aug.get("affine_inplane", False)) and spatial_dims == 3
        # 2D has a single rotation angle (in-plane); 3D one per axis (about z only in-plane).
        rotate = (rot,) if spatial_dims == 2 else (0.0, 0.0, rot) if inplane else (rot,) * 3
        out.append(
            RandAffined(
                spatial,
                prob=p["affine_prob"],
                rotate_range=rotate,
                scale_range=(scale, scale, 0.0) if inplane else (scale,) * spatial_dims,
                mode=("bilinear", *nearest),
                padding_mode="zeros",
            )
        )
    if "flip_prob" in p:
        flip = p["flip_prob"]
        out += [RandFlipd(spatial, prob=flip, spatial_axis=a) for a in range(spatial_dims)]
    if "rotate90_prob" in p:
        # In-plane (x, y) only: z may have another spacing (EM, thick-slice MR).
        out.append(RandRotate90d(spatial, prob=p["rotate90_prob"], spatial_axes=(0, 1)))
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
    if spatial_dims == 3:  # section artefacts: a 2D patch is one section
        out += em_artefacts(aug, p, spatial)
    return out


def em_artefacts(
    aug: Mapping[str, Any], p: Mapping[str, float], keys: Sequence[str]
) -> list[MapTransform]:
    """The EM section artefacts a preset asks for (see the module doc)."""
    out: list[MapTransform] = []
    if "misalignment_prob" in p:
        out.append(
            RandMisalignmentd(
                list(keys),  # the stack was cut misaligned: labels and mask move too
                prob=p["misalignment_prob"],
                max_shift=int(aug.get("misalignment_max_shift", 8)),
                slip_ratio=float(aug.get("misalignment_slip_ratio", 0.5)),
            )
        )
    if "missing_section_prob" in p:
        out.append(
            RandMissingSectiond(
                "image",
                prob=p["missing_section_prob"],
                max_sections=int(aug.get("missing_section_max", 1)),
                mode=str(aug.get("missing_section_mode", "both")),
            )
        )
    if "motion_blur_prob" in p:
        out.append(
            RandMotionBlurd(
                "image",
                prob=p["motion_blur_prob"],
                max_sections=int(aug.get("motion_blur_sections", 2)),
                kernel_size=tuple(aug.get("motion_blur_kernel", (5, 11))),
            )
        )
    return out
