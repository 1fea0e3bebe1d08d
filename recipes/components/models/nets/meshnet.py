"""MeshNet (Fedorov et al. 2017): a U-Net-free segmenter of dilated 3x3x3 convolutions.

No down-sampling at all: the receptive field grows through the dilation schedule alone
(1,2,4,8,16,8,4,2,1 covers 2*sum(d)+1 = 93 voxels), so the output keeps full resolution and
any patch size works. The default schedule is the stroke paper's authors' own (the Plis lab's
neuroneural/catalyst_example ``modelAE.json`` @ 629cb45, for 256^3 brains): with width 26, one
input channel and two classes, the paper's MeshNet-26 of 147,474 parameters. ``width``
channels throughout (``meshnet26`` = width 26): tiny models (~100k parameters) that still
segment whole brains, which is what the BrainChop line uses.
``spatial_dims=2`` builds the same net of 3x3 convolutions for slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 16, 8, 4, 2, 1)


_LAYERS: dict[int, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.Dropout2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.Dropout3d),
}


class MeshBlock(nn.Sequential):
    """Dilated 3x3(x3) conv -> BatchNorm -> ReLU (-> dropout); padding keeps the size."""

    def __init__(
        self, in_ch: int, out_ch: int, dilation: int, dropout: float, spatial_dims: int = 3
    ) -> None:
        conv, norm, drop = _LAYERS[spatial_dims]
        layers: list[nn.Module] = [
            conv(in_ch, out_ch, 3, padding=dilation, dilation=dilation),
            norm(out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(drop(dropout))
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
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in _LAYERS:
            raise ValueError(f"MeshNet: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        chans = [in_channels] + [width] * len(dilations)
        self.blocks = nn.Sequential(
            *(
                MeshBlock(chans[i], chans[i + 1], d, dropout, spatial_dims)
                for i, d in enumerate(dilations)
            )
        )
        self.head = _LAYERS[spatial_dims][0](width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))
