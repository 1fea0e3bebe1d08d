"""Build MONAI networks from ``cfg.model`` and optionally checkpoint their activations.

The config names a network and passes everything else straight to its constructor, so a
YAML file documents the exact MONAI arguments of a run and nothing is renamed in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.blocks.activation_checkpointing import ActivationCheckpointWrapper
from monai.networks.blocks.segresnet_block import ResBlock
from monai.networks.nets import BasicUNet, SegResNet, UNet
from monai.networks.nets.basic_unet import Down, TwoConv
from omegaconf import DictConfig, OmegaConf
from torch import nn

MODELS: dict[str, type[nn.Module]] = {
    "segresnet": SegResNet,
    "unet": UNet,
    "basic_unet": BasicUNet,
}

# The single-input convolution blocks of the three networks. Their activations dominate
# memory, and each takes one tensor, which is what MONAI's checkpoint wrapper accepts
# (BasicUNet's two-input UpCat is reached through its TwoConv).
CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (
    ResBlock,
    ResidualUnit,
    Convolution,
    TwoConv,
    Down,
)


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
    # YAML has no tuples, but MONAI's norm/act arguments expect (name, kwargs) tuples.
    for key in ("norm", "act"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return MODELS[name](**kwargs)


class TrainingCheckpoint(ActivationCheckpointWrapper):
    """MONAI's wrapper, but only recomputing when gradients are being recorded.

    Under ``torch.no_grad`` (validation) there is nothing to save memory on, so the wrapped
    block runs directly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return super().forward(x)
        return self.module(x)


def apply_grad_checkpointing(net: nn.Module) -> int:
    """Wrap every outermost block of ``CHECKPOINTED_BLOCKS`` in place; return how many.

    Outermost only: a wrapped block is recomputed as a whole in backward, so wrapping its
    children too would recompute them twice.
    """
    count = 0
    for name, child in list(net.named_children()):
        if isinstance(child, ActivationCheckpointWrapper):
            continue
        if isinstance(child, CHECKPOINTED_BLOCKS):
            setattr(net, name, TrainingCheckpoint(child))
            count += 1
        else:
            count += apply_grad_checkpointing(child)
    return count


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
