"""Build MONAI networks from ``cfg.model`` and optionally checkpoint their activations.

The config names a network and passes everything else straight to its constructor, so a
YAML file documents the exact MONAI arguments of a run and nothing is renamed in between.
Additions, all explicit: ``size`` (published | small | tiny, see ``sizes.py``) shrinks the
published widths of any model; DynUNet plans its null kernels, strides and filters from
``patch_size`` and ``spacing`` as nnU-Net does; ``mednext`` takes MONAI's ``variant``
(S/B/M/L) and goes through ``create_mednext``; any model may set ``pad_multiple`` to be wrapped in
:class:`PadToMultiple` (SwinUNETR needs sides divisible by 32; MedNeXt's per-channel norms
need more than one voxel at the bottom).

Every model config passes ``spatial_dims: ${dims.spatial_dims}``, so ``dims=2d`` builds the
2D version of each network that has one; RSUNet is 3D only (its point is anisotropic 3D).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks.activation_checkpointing import ActivationCheckpointWrapper
from monai.networks.blocks.mednext_block import MedNeXtBlock
from monai.networks.nets import (
    UNETR,
    AttentionUnet,
    BasicUNet,
    DynUNet,
    SegResNet,
    SwinUNETR,
    UNet,
)
from monai.networks.nets.mednext import MedNeXt, create_mednext
from omegaconf import DictConfig, OmegaConf
from torch import nn

# Re-exported: the trainer, bench and tests import checkpointing from here.
from recipes.components.models.grad_checkpointing import (  # noqa: F401
    CHECKPOINTED_BLOCKS,
    TrainingCheckpoint,
    apply_grad_checkpointing,
)
from recipes.components.models.nets import MeshNet, RSUNet
from recipes.components.models.sizes import apply_size, plan_dynunet


class PadToMultiple(nn.Module):
    """Zero-pad the spatial dims up to a multiple of ``multiple``, crop the output back.

    SwinUNETR rejects inputs whose sides are not divisible by 2**5; padding lets it take the
    same patch sizes (e.g. 16^3 or 48^3 sliding windows) as every other network. Padded
    voxels are zeros, i.e. the mean of a z-scored image.
    """

    def __init__(self, net: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> Any:
        shape = x.shape[2:]
        pad: list[int] = []
        for side in reversed(shape):
            pad += [0, (-side) % self.multiple]
        padded = F.pad(x, pad)
        out = self.net(padded)
        if isinstance(out, (list, tuple)):  # deep supervision: coarser outputs crop in scale
            return [self._crop(o, shape, padded.shape[2:]) for o in out]
        return self._crop(out, shape, padded.shape[2:])

    @staticmethod
    def _crop(out: torch.Tensor, shape: Sequence[int], padded: Sequence[int]) -> torch.Tensor:
        keep = [math.ceil(s * o / p) for s, o, p in zip(shape, out.shape[2:], padded, strict=True)]
        return out[(..., *(slice(0, k) for k in keep))]


# MONAI's create_mednext presets (arXiv 2303.09975), restated because it fixes
# init_filters=32 and a CPU run needs fewer: (encoder, decoder, bottleneck expansion ratios,
# blocks_down, blocks_bottleneck, blocks_up).
MEDNEXT_VARIANTS: dict[str, tuple[Any, Any, int, tuple, int, tuple]] = {
    "S": (2, 2, 2, (2, 2, 2, 2), 2, (2, 2, 2, 2)),
    "B": ((2, 3, 4, 4), (4, 4, 3, 2), 4, (2, 2, 2, 2), 2, (2, 2, 2, 2)),
    "M": ((2, 3, 4, 4), (4, 4, 3, 2), 4, (3, 4, 4, 4), 4, (4, 4, 4, 3)),
    "L": ((3, 4, 8, 8), (8, 8, 4, 3), 8, (3, 4, 8, 8), 8, (8, 8, 4, 3)),
}


def _mednext(
    variant: str = "S", init_filters: int = 32, dropout: float = 0.0, **kwargs: Any
) -> nn.Module:
    """``variant`` S/B/M/L as in ``create_mednext`` (residual, group norm), any width;
    ``dropout``: :func:`add_mednext_dropout`."""
    if init_filters == 32:
        return add_mednext_dropout(create_mednext(variant, **kwargs), dropout)
    enc, dec, bott, down, n_bott, up = MEDNEXT_VARIANTS[variant.upper()]
    net = MedNeXt(
        init_filters=init_filters,
        encoder_expansion_ratio=enc,
        decoder_expansion_ratio=dec,
        bottleneck_expansion_ratio=bott,
        blocks_down=down,
        blocks_bottleneck=n_bott,
        blocks_up=up,
        use_residual_connection=True,
        norm_type="group",
        **kwargs,
    )
    return add_mednext_dropout(net, dropout)


def add_mednext_dropout(net: nn.Module, p: float) -> nn.Module:
    """Element-wise dropout in every MedNeXt block (its down and up blocks too), after the
    GELU of the expansion and before the compressing 1x1 convolution: where ConvNeXt's MLP
    drops. MONAI's MedNeXt has no dropout argument; the activation becomes act + dropout (no
    parameters, so checkpoints are unchanged). 0: nothing is added."""
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"mednext: dropout must be in [0, 1), got {p}")
    if p > 0:
        for block in list(net.modules()):
            if isinstance(block, MedNeXtBlock):
                block.act = nn.Sequential(block.act, nn.Dropout(float(p)))
    return net


MODELS: dict[str, Any] = {
    "segresnet": SegResNet,
    "unet": UNet,
    "basic_unet": BasicUNet,
    "dynunet": DynUNet,
    "unetr": UNETR,
    "swin_unetr": SwinUNETR,
    "attention_unet": AttentionUnet,
    "mednext": _mednext,
    "meshnet": MeshNet,
    "rsunet": RSUNet,
}

# Models that exist in 3D only: their builders take no spatial_dims.
THREE_D_ONLY = frozenset({"rsunet"})
TWO_D_CAPABLE = tuple(sorted(set(MODELS) - THREE_D_ONLY))


def build_model(model_cfg: DictConfig | Mapping[str, Any]) -> nn.Module:
    """Instantiate ``MODELS[cfg.name](**rest of cfg)``."""
    kwargs = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    assert isinstance(kwargs, dict)
    name = kwargs.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    kwargs = apply_size(name, kwargs)  # model.size: published (default) | small | tiny
    if name == "dynunet":
        kwargs = plan_dynunet(kwargs)  # null kernels/strides/filters: nnU-Net's plan
    # YAML has no tuples, but MONAI's norm/act arguments expect (name, kwargs) tuples.
    for key in ("norm", "act", "norm_name"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    pad = kwargs.pop("pad_multiple", None)
    if name in THREE_D_ONLY:
        dims = kwargs.pop("spatial_dims", 3)
        if dims != 3:
            raise ValueError(
                f"model {name!r} is 3D only (spatial_dims={dims}); 2D-capable models: "
                f"{', '.join(TWO_D_CAPABLE)}"
            )
    net = MODELS[name](**kwargs)
    return PadToMultiple(net, int(pad)) if pad else net


def _unwrapped_key(key: str, wrappers: list[str]) -> str:
    for prefix in wrappers:
        inner = f"{prefix}.module." if prefix else "module."
        if key.startswith(inner):
            return (f"{prefix}." if prefix else "") + key[len(inner) :]
    return key


def _wrapper_names(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if isinstance(m, ActivationCheckpointWrapper)]


def plain_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net.state_dict()`` with the wrappers' ``.module`` removed from the keys.

    Checkpoints then load into the same network with or without grad checkpointing.
    """
    wrappers = _wrapper_names(net)
    return {_unwrapped_key(k, wrappers): v for k, v in net.state_dict().items()}


def load_plain_state_dict(net: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`plain_state_dict` (strict)."""
    wrappers = _wrapper_names(net)
    own_key = {_unwrapped_key(k, wrappers): k for k in net.state_dict()}
    net.load_state_dict({own_key.get(k, k): v for k, v in state.items()})
