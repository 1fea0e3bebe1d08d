"""Activation (gradient) checkpointing for every network of the recipe.

:func:`apply_grad_checkpointing` wraps the blocks of :data:`CHECKPOINTED_BLOCKS` in
:class:`TrainingCheckpoint`: in training, a wrapped block keeps only its inputs for backward
and recomputes its inside then. What a wrap saves is what the block's own operations keep
for backward beyond its inputs, so the rules below follow where the activations live:

- The decoder blocks that take the upsampled tensor *and* the skip (BasicUNet's ``UpCat``,
  DynUNet's ``UnetUpBlock``, the UNETR/SwinUNETR ``UnetrUpBlock``, AttentionUnet's
  ``AttentionBlock``) are wrapped whole. Wrapping only their convolutions leaves the
  concatenated tensor (skip + upsampled channels, at the level's full resolution) stored as
  the convolutions' input, and the attention gate's normalised maps stored outright.
- A MONAI ``Convolution`` is wrapped only when it has a norm/activation after the conv: a
  bare conv keeps nothing but its input, which the wrapper keeps anyway, so wrapping it only
  costs a recomputation.
- A few modules that are plain ``nn.Sequential`` in MONAI are named per architecture
  (:data:`NAMED_SEGMENTS`), e.g. SegResNet's full-resolution norm-act-conv head.

Use :func:`saved_tensor_bytes` to see the effect: it counts the bytes that autograd keeps
for backward, which unlike process RSS does not depend on the allocator or the conv kernels'
temporary buffers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from monai.networks.blocks import Convolution, ResidualUnit, TransformerBlock
from monai.networks.blocks.activation_checkpointing import ActivationCheckpointWrapper
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock, UnetUpBlock
from monai.networks.blocks.mednext_block import MedNeXtBlock
from monai.networks.blocks.segresnet_block import ResBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from monai.networks.nets import SegResNet
from monai.networks.nets.attentionunet import AttentionBlock, ConvBlock
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from monai.networks.nets.swin_unetr import BasicLayer
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint

from recipes.components.models.nets.meshnet import MeshBlock
from recipes.components.models.nets.rsunet import ResBlock as RSResBlock

# Wrapped wherever they occur (outermost only). Multi-input blocks take their tensors
# positionally, as their parents call them.
CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (
    # single input
    ResBlock,
    ResidualUnit,
    Convolution,  # only with norm/act, see _worth_wrapping
    TwoConv,
    Down,
    UnetBasicBlock,
    UnetResBlock,
    UnetrBasicBlock,
    TransformerBlock,
    BasicLayer,  # SwinUNETR's transformer stages
    ConvBlock,
    MedNeXtBlock,  # and its Down/Up subclasses
    MeshBlock,
    RSResBlock,
    # upsampled tensor + skip (or gate + skip)
    UpCat,
    UnetUpBlock,
    UnetrUpBlock,
    AttentionBlock,
)

# Child modules wrapped by name in a given network: plain nn.Sequential in MONAI, so they
# can't be matched by class. SegResNet's head is GroupNorm-ReLU-conv at full resolution,
# which otherwise keeps two full-size tensors (the norm's input and the ReLU's output).
NAMED_SEGMENTS: dict[type[nn.Module], tuple[str, ...]] = {
    SegResNet: ("conv_final",),
}


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Undo any running-statistics update made inside (BatchNorm's mean/var/count).

    The recomputation in backward runs the block in training mode a second time; without
    this, every BatchNorm inside would fold the same batch into its running statistics
    twice, and evaluation would see different statistics than without checkpointing.
    """
    norms = [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, saved, strict=True):
                for key, value in buffers.items():
                    getattr(norm, key).copy_(value)


class TrainingCheckpoint(ActivationCheckpointWrapper):
    """MONAI's wrapper, for blocks of one or more inputs, recomputing only in training.

    Under ``torch.no_grad`` (validation) there is nothing to save memory on, so the wrapped
    block runs directly. The recomputation leaves norm running statistics as the first pass
    set them (see :func:`_running_stats_kept`), so loss, grads *and* buffers match an
    unwrapped network.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if not (self.training and torch.is_grad_enabled()):
            return self.module(*args, **kwargs)
        if kwargs:  # e.g. AttentionLayer calls attention(g=..., x=...)
            # Positional, so that checkpoint saves every tensor input the same visible way
            # (it holds keyword tensors in a closure, out of saved_tensors_hooks' sight).
            args = inspect.signature(self.module.forward).bind(*args, **kwargs).args
        calls = 0

        def run(*inputs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return self.module(*inputs)
            with _running_stats_kept(self.module):
                return self.module(*inputs)

        return checkpoint(run, *args, use_reentrant=False)


def _worth_wrapping(module: nn.Module) -> bool:
    if isinstance(module, Convolution):  # conv plus an "adn" (act/dropout/norm) child
        return len(module) > 1
    return isinstance(module, CHECKPOINTED_BLOCKS)


def apply_grad_checkpointing(net: nn.Module) -> int:
    """Wrap every outermost checkpointed block in place; return how many.

    Outermost only: a wrapped block is recomputed as a whole in backward, so wrapping its
    children too would recompute them twice.
    """
    named = NAMED_SEGMENTS.get(type(net), ())
    count = 0
    for name, child in list(net.named_children()):
        if isinstance(child, ActivationCheckpointWrapper):
            continue
        if name in named or _worth_wrapping(child):
            setattr(net, name, TrainingCheckpoint(child))
            count += 1
        else:
            count += apply_grad_checkpointing(child)
    return count


def saved_tensor_bytes(step: Callable[[], Any], exclude: nn.Module | None = None) -> int:
    """Bytes of distinct storages that autograd saves for backward while ``step`` runs.

    ``step`` runs the forward pass (and may run backward: tensors saved by a checkpoint's
    recomputation are counted too, so the figure covers what backward holds as well). The
    parameters of ``exclude`` (the model) are left out: they are memory either way. A
    checkpoint's inputs count, since the wrapper saves them through the same mechanism.
    Deterministic, unlike RSS: no allocator caching, no kernel scratch buffers.
    """
    skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude else set()
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return cast(int, sum(sizes.values()))
