"""Denoisers from ``cfg.model``, each with how it takes the image (MONAI's conditioning modes).

``medsegdiff``: our MedSegDiff (``models/nets/medsegdiff.py``); the image is its ``context``
(MONAI's ``crossattn`` mode, which passes the condition as ``context``). ``concat_unet``:
MONAI's ``DiffusionModelUNet`` on the noisy mask concatenated with the image (``concat``
mode: channels ``[x_t, image]``), as in MONAI's segmentation-diffusion tutorial (Wolleb et
al., "Diffusion models for implicit image segmentation ensembles").

``org_medsegdiff``: the official MedSegDiff network (``models/nets/org_medsegdiff.py``), the
image as ``context`` too; it returns ``(ε, calibration logits)``, which :func:`split_output`
takes apart (the calibration loss scores the second).

``denoise`` makes the call exactly as ``DiffusionInferer`` does in training, so that the
sampler and the training step see the same network input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from omegaconf import DictConfig, OmegaConf
from torch import nn

from recipes.components.models.nets import MedSegDiff, ORGMedSegDiff

DENOISERS: dict[str, tuple[Any, str]] = {
    "medsegdiff": (MedSegDiff, "crossattn"),
    "org_medsegdiff": (ORGMedSegDiff, "crossattn"),
    "concat_unet": (DiffusionModelUNet, "concat"),
}


def build_denoiser(model_cfg: DictConfig | Mapping[str, Any]) -> tuple[nn.Module, str]:
    """(the network, its conditioning mode). ``in_channels`` is the image's channel count;
    ``concat_unet`` gets one more for the noisy mask."""
    kwargs = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    assert isinstance(kwargs, dict)
    name = kwargs.pop("name")
    if name not in DENOISERS:
        raise ValueError(
            f"model {name!r} is not a diffusion denoiser; choose one of {sorted(DENOISERS)} "
            "(model=medsegdiff_16c, medsegdiff_32c_simple, medsegdiff_32c_full, org_medsegdiff, "
            "concat_unet, ...)"
        )
    cls, mode = DENOISERS[name]
    if mode == "concat":
        kwargs["in_channels"] = int(kwargs["in_channels"]) + int(kwargs.pop("mask_channels", 1))
        kwargs.pop("image_size", None)  # fully convolutional: any window size
    return cls(**kwargs), mode


def split_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the prediction, the calibration logits or None) of a denoiser's output."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None


def denoise(
    net: nn.Module, mode: str, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor
) -> torch.Tensor:
    """One network evaluation, in ``DiffusionInferer``'s convention for ``mode``: the
    prediction (a calibration head's output is dropped)."""
    if mode == "concat":
        return split_output(net(torch.cat([x_t, image], dim=1), timesteps=t, context=None))[0]
    return split_output(net(x_t, timesteps=t, context=image))[0]
