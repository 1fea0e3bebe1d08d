"""Model sizes: the published configurations by default, ``model.size`` to shrink them.

Every model YAML states its published size (the width, depth and heads of its paper or of
the tool that defines it: Auto3DSeg, nnU-Net, PyTorch Connectomics) and carries
``size: published``. ``model.size=small`` or ``model.size=tiny`` replaces the keys listed
below for that model, so one matrix line (``base: [model.size=tiny]``) shrinks every model
of a ``model`` axis alike: CPU demos and tests use ``tiny``, a GPU smoke test ``small``.

Explicit overrides win: a preset replaces a key only while it still holds its published
value, so ``model.size=tiny model.width=4`` is a tiny MeshNet of width 4. (An override that
happens to equal the published value is indistinguishable from none and gets the preset.)

``tiny`` is the CPU size this project trained before published sizes became the default
(8 filters: a 32^3 epoch in seconds; MeshNet also gets 7 layers instead of 9); ``small`` is
about half the published width.

DynUNet's published configuration is nnU-Net's ``3d_fullres`` (``2d`` with ``dims=2d``):
its YAML leaves ``kernel_size``, ``strides``, ``upsample_kernel_size`` and ``filters``
null, and :func:`nnunet_plan` derives them from the training patch and the data spacing the
way nnU-Net plans a network.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

SIZES = ("published", "small", "tiny")

_DYN_TINY = {
    "kernel_size": [3, 3, 3, 3],
    "strides": [1, 2, 2, 2],
    "upsample_kernel_size": [2, 2, 2],
    "filters": [8, 16, 32, 64],
}
_DYN_SMALL = {**_DYN_TINY, "filters": [16, 32, 64, 128]}
_DYN_AUTO = dict.fromkeys(_DYN_TINY)  # null: planned from the patch (nnunet_plan)

#: model name -> size -> {key: value}. "published" restates the YAML (a test checks that
#: they agree); the others are what ``model.size`` replaces.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Auto3DSeg's segresnet template: init_filters 32.
    "segresnet": {
        "published": {"init_filters": 32},
        "small": {"init_filters": 16},
        "tiny": {"init_filters": 8},
    },
    # MONAI's 3D UNet tutorials / PyTorch Connectomics' monai_unet: 32..512, 2 res units.
    "unet": {
        "published": {
            "channels": [32, 64, 128, 256, 512],
            "strides": [2, 2, 2, 2],
            "num_res_units": 2,
        },
        "small": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2},
        "tiny": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1},
    },
    # MONAI BasicUNet's own defaults (PyTC's monai_basic_unet3d).
    "basic_unet": {
        "published": {"features": [32, 32, 64, 128, 256, 32]},
        "small": {"features": [16, 16, 32, 64, 128, 16]},
        "tiny": {"features": [8, 8, 16, 32, 64, 8]},
    },
    # Oktay et al. 2018's 3D attention U-Net: 64..1024 / feature_scale 4.
    "attention_unet": {
        "published": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2]},
        "small": {"channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2]},
        "tiny": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2]},
    },
    "dynunet": {"published": _DYN_AUTO, "small": _DYN_SMALL, "tiny": _DYN_TINY},
    # MedNeXt-B, kernel 3 (Roy et al. 2023; 10.5M parameters).
    "mednext": {
        "published": {"variant": "B", "init_filters": 32},
        "small": {"variant": "S", "init_filters": 16},
        "tiny": {"variant": "S", "init_filters": 8},
    },
    # Swin UNETR (Hatamizadeh et al. 2022): feature size 48, depths 2, heads 3..24, window 7.
    "swin_unetr": {
        "published": {
            "feature_size": 48,
            "depths": [2, 2, 2, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "norm_name": "instance",
        },
        "small": {
            "feature_size": 24,
            "depths": [2, 2, 2, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "norm_name": "instance",
        },
        # Group norm: instance norm fails on the 1-voxel bottom of a 32^3 input.
        "tiny": {
            "feature_size": 12,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 4,
            "norm_name": ["group", {"num_groups": 4}],
        },
    },
    # UNETR (Hatamizadeh et al. 2022): ViT-B/16 encoder, feature size 16.
    "unetr": {
        "published": {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12},
        "small": {"feature_size": 16, "hidden_size": 384, "mlp_dim": 1536, "num_heads": 6},
        "tiny": {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4},
    },
    # MeshNet-26 of the stroke paper (Fedorov et al.): 9 dilated layers of width 26.
    "meshnet": {
        "published": {"width": 26, "dilations": [1, 2, 4, 8, 16, 8, 4, 2, 1]},
        "small": {"width": 16, "dilations": [1, 2, 4, 8, 16, 8, 4, 2, 1]},
        "tiny": {"width": 8, "dilations": [1, 2, 4, 8, 4, 2, 1]},
    },
    # PyTorch Connectomics' RSUNet (connectomics/models/arch/rsunet.py): hydra-lv's
    # model.filters; small: PyTC's tutorials/rsunet_lucchi++.yaml; tiny: this project's CPU size.
    "rsunet": {
        "published": {"features": [32, 64, 128, 256, 512]},
        "small": {"features": [32, 64, 128, 256]},
        "tiny": {"features": [8, 16, 32, 64]},
    },
}


def apply_size(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop ``size`` from a model's arguments and apply its preset to the published keys."""
    size = kwargs.pop("size", "published")
    if size not in SIZES:
        close = difflib.get_close_matches(str(size), SIZES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"model.size={size!r} is not a size; valid sizes: {', '.join(SIZES)}{hint}"
        )
    presets = PRESETS.get(name)
    if size == "published" or presets is None:
        return kwargs
    published = presets["published"]
    for key, value in presets[size].items():
        # A key that no longer holds its published value was overridden: that wins.
        if key not in published or kwargs.get(key) == published[key]:
            kwargs[key] = value
    return kwargs


def nnunet_plan(
    patch: Sequence[int], spacing: Sequence[float] | None, *, max_features: int | None = None
) -> dict[str, list]:
    """Kernels, strides and filters of nnU-Net's plain U-Net for this patch and spacing.

    As nnU-Net plans ``3d_fullres`` (and MONAI's DynUNet tutorial restates): at each stage
    an axis is halved while it is at least 8 voxels (the bottom stays >= 4, nnU-Net's
    minimal feature-map edge), is even, and its spacing is at most twice the finest one
    (anisotropic axes wait until the others catch up); an axis that is still more than
    twice as coarse gets a kernel of 1. Filters: min(32 * 2^stage, 320), 512 in 2D.
    """
    sizes = [int(s) for s in patch]
    dims = len(sizes)
    spacings = [float(s) for s in spacing] if spacing and len(spacing) == dims else [1.0] * dims
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * dims]
    while True:
        ratio = [s / min(spacings) for s in spacings]
        stride = [
            2 if r <= 2 and size >= 8 and size % 2 == 0 else 1
            for r, size in zip(ratio, sizes, strict=True)
        ]
        if all(s == 1 for s in stride):
            break
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
    kernels.append([3] * dims)
    cap = max_features or (320 if dims == 3 else 512)
    return {
        "kernel_size": kernels,
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "filters": [min(32 * 2**i, cap) for i in range(len(strides))],
    }


def plan_dynunet(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill DynUNet's null kernel_size / strides / upsample_kernel_size / filters."""
    patch = kwargs.pop("patch_size", None)
    spacing = kwargs.pop("spacing", None)
    if all(kwargs.get(k) is not None for k in _DYN_AUTO):
        return kwargs
    if patch is None:
        raise ValueError(
            "dynunet: kernel_size/strides/filters are null (planned from the patch, as "
            "nnU-Net does) but model.patch_size is not set; set it (the YAML reads "
            "${training.patch_size}) or give kernel_size, strides and filters"
        )
    plan = nnunet_plan(patch, spacing)
    if kwargs.get("strides") is not None:  # given strides: plan only what is missing
        stages = len(kwargs["strides"])
        plan["upsample_kernel_size"] = kwargs["strides"][1:]
        plan["kernel_size"] = [3] * stages
        plan["filters"] = [min(32 * 2**i, 320 if len(patch) == 3 else 512) for i in range(stages)]
    for key, value in plan.items():
        if kwargs.get(key) is None:
            kwargs[key] = value
    return kwargs


def effective_model_config(model_cfg: DictConfig) -> DictConfig:
    """``cfg.model`` resolved, with its size preset and DynUNet's plan applied (``size`` kept):
    the arguments the network is built with, for logging them as params. Building from it
    gives the same network (the applied values count as explicit ones)."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(kwargs, dict)
    size = kwargs.get("size", "published")
    kwargs = apply_size(str(kwargs["name"]), dict(kwargs))
    if kwargs["name"] == "dynunet":
        kept = {k: kwargs[k] for k in ("patch_size", "spacing") if k in kwargs}
        kwargs = {**plan_dynunet(kwargs), **kept}
    return OmegaConf.create({**kwargs, "size": size})
