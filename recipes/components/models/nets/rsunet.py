"""RSUNet: the residual symmetric U-Net of Lee et al. 2017 for anisotropic EM volumes.

Serial-section EM is ~4-10x coarser in z than in-plane, so the first ``flat_levels`` levels
use in-plane 3x3x1 convolutions and pool in-plane only (2x2x1); deeper levels, where the
in-plane resolution has caught up with z, use 3x3x3 and pool isotropically. Skips are added,
not concatenated (the "symmetric" part), which keeps the decoder as cheap as the encoder.
Tensors are (B, C, X, Y, Z) with z last, as the recipe's RAS-oriented loader yields them
(the paper's 1x3x3 in its z-first layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv(in_ch: int, out_ch: int, flat: bool) -> nn.Conv3d:
    kernel, pad = ((3, 3, 1), (1, 1, 0)) if flat else (3, 1)
    return nn.Conv3d(in_ch, out_ch, kernel, padding=pad, bias=False)


def _scale(flat: bool) -> tuple[int, int, int]:
    return (2, 2, 1) if flat else (2, 2, 2)


class ResBlock(nn.Module):
    """conv -> (BN-ReLU-conv) x2 + residual -> BN-ReLU, as in the paper's Fig. 1."""

    def __init__(self, in_ch: int, out_ch: int, flat: bool) -> None:
        super().__init__()
        self.pre = _conv(in_ch, out_ch, flat)
        self.body = nn.Sequential(
            nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
            _conv(out_ch, out_ch, flat),
            nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
            _conv(out_ch, out_ch, flat),
        )
        self.post = nn.Sequential(nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        return self.post(x + self.body(x))


class RSUNet(nn.Module):
    """Encoder ``features`` per level; ``flat_levels`` first levels are 2D-in-plane."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128),
        flat_levels: int = 2,
    ) -> None:
        super().__init__()
        feats = list(features)
        self.flat = [i < flat_levels for i in range(len(feats))]
        self.encoder = nn.ModuleList(
            ResBlock(in_channels if i == 0 else feats[i - 1], f, self.flat[i])
            for i, f in enumerate(feats[:-1])
        )
        # Pooling below level i follows level i's anisotropy: no z pooling while still flat.
        self.pools = nn.ModuleList(nn.MaxPool3d(_scale(flat)) for flat in self.flat[:-1])
        self.bottleneck = ResBlock(feats[-2], feats[-1], self.flat[-1])
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(feats[i + 1], feats[i], _scale(self.flat[i]), _scale(self.flat[i]))
            for i in range(len(feats) - 1)
        )
        self.decoder = nn.ModuleList(
            ResBlock(feats[i], feats[i], self.flat[i]) for i in range(len(feats) - 1)
        )
        self.head = nn.Conv3d(feats[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, pool in zip(self.encoder, self.pools, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for i in reversed(range(len(skips))):
            x = self.decoder[i](self.ups[i](x) + skips[i])  # additive skip
        return self.head(x)
