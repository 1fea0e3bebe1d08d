"""RSUNet as PyTorch Connectomics builds it (``model.architecture: rsunet``, the network of the
hydra-lv study): the residual symmetric U-Net of Lee et al. 2017 as ported from emvision.

Rebuilt from PyTC's ``connectomics/models/arch/rsunet.py`` (PytorchConnectomics/
pytorch_connectomics @ 4888f394, identical to zudi-lin/pytorch_connectomics @ 066f1c2; the
emvision ancestor is torms3/pytorch-emvision ``emvision/models/rsunet.py`` @ 4f8591f9):

- every block is pre-activation: ``ConvBlock`` = norm-act-conv, a residual block
  (norm-act-conv-norm-act-conv + identity), norm-act-conv: four bias-free convolutions;
- the encoder max-pools in-plane only at **every** level (PyTC's (1, 2, 2) in z, y, x; here
  ``(2, 2, 1)``: tensors are (B, C, X, Y, Z), z last, as the recipe's loader yields them);
- the decoder up-samples with a **fixed** (non-learned, a buffer) Caffe bilinear kernel, as a
  depthwise transposed convolution (no checkerboard artefacts: the reason the group picks
  it), projects with a bias-free 1x1x1 convolution and **adds** the skip;
- a final norm-act and a biased 1x1x1 head give logits (no output activation).

``norm``: batch | group (min(8, C) groups, lowered until they divide C, as PyTC) | instance
(no affine parameters) | none; ``act``: relu | leakyrelu | prelu | elu. Norm and activation
come from MONAI's layer factories (``monai.networks.blocks.ADN``).

``deep_supervision``: PyTC's heads, a biased 1x1x1 convolution on the decoder input at each
of the (up to) 4 deepest levels (the bottleneck, then 1/8, 1/4, 1/2 in-plane). Training
returns ``[full, bottleneck, 1/8, 1/4, 1/2]``, deepest head first, so that MONAI's
``DeepSupervisionLoss`` weights (``exp``: 1, 0.5, 0.25, 0.125, 0.0625) are PyTC's current
ones (PytorchConnectomics @ 71f5286d: ds_1 deepest 0.5 ... ds_4 0.0625). PyTC's seed-era code
(Nov-Dec 2025) built the same heads but, by a key mismatch, never put the bottleneck head in
the loss and weighted 1/8, 1/4, 1/2 by 0.5, 0.25, 0.125: ``loss.deep_supervision_weights:
[1.0, 0.0, 0.5, 0.25, 0.125]`` reproduces that (the head stays in the graph with weight 0).
In eval mode (validation, test) only the full-resolution output is returned.

``dropout`` (PyTC's RSUNet has none; the group's sweep samples ``model.dropout`` for every
architecture): element-wise dropout inside every residual block, after its second norm-act
and before its second convolution (the wide-ResNet placement); 0 adds no module.

Parameter counts (in 1, batch norm, relu), equal to PyTC's (tests/test_rsunet.py):
filters [32, 64, 128, 256, 512] out 3: 42,570,245 (+2,892 with the deep-supervision heads);
[28, 36, 48, 64, 80] out 3: 2,431,301.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN
from torch import nn

NORMS = ("batch", "group", "instance", "none")
ACTS = ("relu", "leakyrelu", "prelu", "elu")
#: PyTC's down-sampling (1, 2, 2) in (z, y, x), here in (x, y, z).
IN_PLANE = (2, 2, 1)


def _norm(norm: str, channels: int) -> tuple[str, dict[str, Any]] | None:
    if norm == "none":
        return None
    if norm == "group":  # PyTC: min(8, C) groups, lowered until they divide C
        groups = min(8, channels)
        while channels % groups:
            groups -= 1
        return ("group", {"num_groups": groups})
    return (norm, {})


def _act(act: str, negative_slope: float, inplace: bool) -> tuple[str, dict[str, Any]]:
    if act == "leakyrelu":
        return ("leakyrelu", {"negative_slope": negative_slope, "inplace": inplace})
    if act == "prelu":
        return ("prelu", {"init": 0.25})
    return (act, {"inplace": inplace})


class _Layers:
    """How every block normalises, activates and pads: one place for the options."""

    def __init__(self, norm: str, act: str, negative_slope: float, dropout: float) -> None:
        self.norm, self.act, self.slope, self.dropout = norm, act, negative_slope, dropout

    def norm_act(self, channels: int, dropout: bool = False) -> ADN:
        """Norm then activation (then dropout, in a residual block), MONAI's ADN."""
        drop = self.dropout if dropout and self.dropout > 0 else None
        return ADN(
            ordering="NAD" if drop else "NA",
            in_channels=channels,
            # In place after a norm (a new tensor) only: without one, PyTC's in-place
            # activation also rectifies the block's input, i.e. its identity branch and the
            # caller's tensor; here norm=none leaves them alone.
            act=_act(self.act, self.slope, inplace=self.norm != "none"),
            norm=_norm(self.norm, channels),
            norm_dim=3,
            dropout=drop,
            dropout_dim=1,  # element-wise, as MONAI's UNet (Dropout3d would drop channels)
        )

    @staticmethod
    def conv(cin: int, cout: int, kernel: Sequence[int]) -> nn.Conv3d:
        return nn.Conv3d(
            cin, cout, tuple(kernel), padding=tuple(k // 2 for k in kernel), bias=False
        )


class ResBlock(nn.Module):
    """x + conv(norm-act(conv(norm-act(x)))): pre-activation, identity shortcut."""

    def __init__(self, channels: int, kernel: Sequence[int], layers: _Layers) -> None:
        super().__init__()
        self.body = nn.Sequential(
            layers.norm_act(channels),
            layers.conv(channels, channels, kernel),
            layers.norm_act(channels, dropout=True),
            layers.conv(channels, channels, kernel),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvBlock(nn.Sequential):
    """norm-act-conv (cin -> cout), a residual block, norm-act-conv (cout -> cout)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], layers: _Layers) -> None:
        super().__init__(
            layers.norm_act(cin),
            layers.conv(cin, cout, kernel),
            ResBlock(cout, kernel, layers),
            layers.norm_act(cout),
            layers.conv(cout, cout, kernel),
        )


class BilinearUp(nn.Module):
    """Caffe's fixed bilinear up-sampling: a depthwise transposed convolution whose kernel
    (``2f - f % 2`` per axis, the bilinear weights over x and y, repeated along z as PyTC
    does) is a buffer, never trained. Edge voxels see one neighbour only (0.75 of a constant),
    exactly as in PyTC."""

    def __init__(self, channels: int, factor: Sequence[int]) -> None:
        super().__init__()
        self.factor = tuple(int(f) for f in factor)
        kernel = [2 * f - f % 2 for f in self.factor]
        self.padding = tuple(math.ceil((f - 1) / 2) for f in self.factor)
        if kernel[0] != kernel[1]:
            raise ValueError(f"rsunet: in-plane factors must match, got {self.factor}")
        size = kernel[0]
        f = float(math.ceil(size / 2))
        c = (size - 1) / (2 * f)
        ramp = torch.tensor([1 - abs(i / f - c) for i in range(size)])
        plane = ramp[:, None] * ramp[None, :]  # (x, y)
        weight = plane[:, :, None].expand(size, size, kernel[2])
        self.register_buffer("weight", weight.expand(channels, 1, *weight.shape).contiguous())
        self.groups = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype)  # type: ignore[union-attr]
        return F.conv_transpose3d(
            x, weight, stride=self.factor, padding=self.padding, groups=self.groups
        )


class UpBlock(nn.Module):
    """Fixed bilinear up-sampling, a bias-free 1x1x1 projection, + skip, ConvBlock."""

    def __init__(
        self, cin: int, cout: int, factor: Sequence[int], kernel: Sequence[int], layers: _Layers
    ) -> None:
        super().__init__()
        self.up = BilinearUp(cin, factor)
        self.proj = nn.Conv3d(cin, cout, 1, bias=False)
        self.conv = ConvBlock(cout, cout, kernel, layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(self.proj(self.up(x)) + skip)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"rsunet: expected 3 values (x, y, z), got {list(value)}")
    return out  # type: ignore[return-value]


class RSUNet(nn.Module):
    """PyTC's RSUNet (module doc). ``features``: the width of each level (PyTC's
    ``model.filters``); ``down_factors``: per level, in (x, y, z) (default (2, 2, 1) at every
    level); ``depth_2d``: the first levels use ``kernel_2d`` (3, 3, 1) instead of 3x3x3 (PyTC's
    ``rsunet_depth_2d``, default 0)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        norm: str = "batch",
        act: str = "relu",
        negative_slope: float = 0.01,
        down_factors: Sequence[Sequence[int]] | None = None,
        kernel_size: int | Sequence[int] = 3,
        depth_2d: int = 0,
        kernel_2d: Sequence[int] = (3, 3, 1),
        deep_supervision: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [int(f) for f in features]
        if len(widths) < 2:
            raise ValueError(f"rsunet: features needs at least 2 levels, got {widths}")
        if norm not in NORMS:
            raise ValueError(f"rsunet: norm={norm!r}; choose one of {', '.join(NORMS)}")
        if act not in ACTS:
            raise ValueError(f"rsunet: act={act!r}; choose one of {', '.join(ACTS)}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"rsunet: dropout must be in [0, 1), got {dropout}")
        depth = len(widths) - 1
        factors = [_triple(f) for f in (down_factors or [IN_PLANE] * depth)]
        if len(factors) != depth:
            raise ValueError(
                f"rsunet: {depth} down_factors needed (one per pooling), got {factors}"
            )
        kernels = [_triple(kernel_size)] * len(widths)
        kernels[: max(0, int(depth_2d))] = [_triple(kernel_2d)] * min(len(widths), int(depth_2d))
        layers = _Layers(norm, act, float(negative_slope), float(dropout))
        self.factors = factors
        # encoder.0: PyTC's input_conv (full resolution); encoder.d: its down block d - 1 (after
        # the pooling); the last one is the bottleneck.
        self.encoder = nn.ModuleList(
            ConvBlock([in_channels, *widths][d], widths[d], kernels[d], layers)
            for d in range(len(widths))
        )
        self.pools = nn.ModuleList(nn.MaxPool3d(f) for f in factors)
        self.up = nn.ModuleList(
            UpBlock(widths[d + 1], widths[d], factors[d], kernels[d], layers)
            for d in reversed(range(depth))
        )
        self.final = layers.norm_act(widths[0])
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        # PyTC: heads on the decoder input of the min(4, depth) deepest steps, deepest first.
        self.ds_heads = nn.ModuleList(
            nn.Conv3d(widths[depth - d], out_channels, 1)
            for d in range(min(4, depth) if deep_supervision else 0)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """PyTC's: Kaiming normal (fan_out, relu) convolutions, zero biases; norms 1 and 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.encoder[0](x)
        skips = []
        for pool, block in zip(self.pools, self.encoder[1:], strict=True):
            skips.append(x)
            x = block(pool(x))
        supervised = []
        for step, up in enumerate(self.up):
            if step < len(self.ds_heads) and self.training:
                supervised.append(self.ds_heads[step](x))
            x = up(x, skips.pop())
        out = self.head(self.final(x))
        return [out, *supervised] if supervised else out
