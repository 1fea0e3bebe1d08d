"""The 2D variant: train on slices of 3D volumes, validate on whole volumes.

``dims=2d`` sets ``dims.spatial_dims: 2`` (every model config reads it), a 2-element
``training.patch_size`` and ``dims.slice_axis`` (2 = z, axial slices of the RAS-oriented
volume). Datasets stay 3D on disk and in the cache; only patch sampling differs: a patch is
``patch_size`` in-plane and one voxel thick along the slice axis (MONAI's foreground-aware
``RandCropByPosNegLabeld``, so the share of lesion-centred slices is as in 3D), then that
axis is squeezed away and the 2D augmentation follows.

Validation follows nnU-Net's 2D configuration: it predicts every slice of the volume with
the 2D network (sliding window within the slice), restacks the slices into a volume and
measures Dice, HD95 and surface Dice on that volume. Per-slice Dice would reward empty
slices and weigh a lesion by how many slices it spans, and it would not be comparable with
the 3D cells of the same matrix; restacked volumes are. MONAI's ``SliceInferer`` does exactly
this slice-by-slice sliding window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import MapTransform, SqueezeDimd
from omegaconf import DictConfig


def slice_axis_of(cfg: DictConfig) -> int | None:
    """The slice axis for a 2D run, None for 3D; checks the config agrees with itself."""
    dims = cfg.get("dims") or {}
    spatial = dims.get("spatial_dims", 3)
    patch = list(cfg.training.patch_size)
    model_dims = cfg.model.get("spatial_dims", spatial)
    if model_dims != spatial:
        raise ValueError(
            f"model.spatial_dims={model_dims} but dims.spatial_dims={spatial}; "
            "pick the variant with dims=2d or dims=3d"
        )
    if spatial == 3:
        if len(patch) != 3:
            raise ValueError(f"3D training needs a 3-element training.patch_size, got {patch}")
        if dims.get("slice_axis") is not None:
            raise ValueError("dims.slice_axis only applies to 2D training (dims=2d)")
        return None
    if spatial != 2:
        raise ValueError(f"dims.spatial_dims must be 2 or 3, got {spatial!r}")
    if len(patch) != 2:
        raise ValueError(f"dims=2d needs a 2-element training.patch_size, got {patch}")
    axis = dims.get("slice_axis", 2)
    if axis not in (0, 1, 2):
        raise ValueError(f"dims.slice_axis must be 0, 1 or 2 (x, y, z in RAS), got {axis!r}")
    return int(axis)


def slice_patch_size(patch: Sequence[int], slice_axis: int | None) -> list[int]:
    """The 3D crop for a 2D patch: one voxel thick along the slice axis."""
    size = [int(p) for p in patch]
    if slice_axis is not None:
        size.insert(slice_axis, 1)
    return size


def squeeze_slice(keys: Sequence[str], slice_axis: int | None) -> list[MapTransform]:
    """Drop the singleton slice axis of 2D patches (+1: the channel axis comes first)."""
    return [] if slice_axis is None else [SqueezeDimd(list(keys), dim=slice_axis + 1)]


def build_inferer(tcfg: DictConfig, slice_axis: int | None) -> Inferer:
    """Whole-volume inference: a 3D sliding window, or slice by slice for 2D models.

    ``training.sw_mode`` (constant | gaussian) blends overlapping windows;
    ``training.sw_padding_mode`` (constant | reflect | replicate | circular) pads volumes
    smaller than a window."""
    kwargs: dict[str, Any] = {
        "roi_size": list(tcfg.patch_size),
        "sw_batch_size": int(tcfg.sw_batch_size),
        "overlap": float(tcfg.sw_overlap),
        "mode": str(tcfg.get("sw_mode") or "constant"),
        "padding_mode": str(tcfg.get("sw_padding_mode") or "constant"),
    }
    if slice_axis is None:
        return SlidingWindowInferer(**kwargs)
    return SliceInferer(spatial_dim=slice_axis, **kwargs)
