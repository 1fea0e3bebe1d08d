"""MeshNet (Fedorov et al. 2017): a U-Net-free segmenter of dilated 3x3x3 convolutions.

No down-sampling at all: the receptive field grows through the dilation schedule alone
(1,2,4,8,16,8,4,2,1 covers ~ 2*sum(d)+1 = 93 voxels), so the output keeps full resolution and
any patch size works. ``width`` channels throughout (``meshnet26`` = width 26): tiny models
(~100k parameters) that still segment whole brains, which is what the BrainChop line uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 16, 8, 4, 2, 1)


class MeshBlock(nn.Sequential):
    """Dilated 3x3x3 conv -> BatchNorm -> ReLU (-> dropout); padding keeps the size."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, dropout: float) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(in_ch, out_ch, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class MeshNet(nn.Module):
    """``len(dilations)`` MeshBlocks of ``width`` channels, then a 1x1x1 classifier."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 26,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        chans = [in_channels] + [width] * len(dilations)
        self.blocks = nn.Sequential(
            *(MeshBlock(chans[i], chans[i + 1], d, dropout) for i, d in enumerate(dilations))
        )
        self.head = nn.Conv3d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))
