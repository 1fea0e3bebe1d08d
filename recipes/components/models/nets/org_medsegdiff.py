"""ORGMedSegDiff: the official MedSegDiff network (MedicineToken/MedSegDiff @ b4aee37,
``guided_diffusion/unet.py``), a single diffusion U-Net on ``[image, x_t]`` plus a "highway"
segmentation network on the image that returns a calibration map (``cal``).

- **Main U-Net**: the guided-diffusion U-Net, here MONAI's ``DiffusionModelUNet`` (the same
  design: residual blocks with an additive timestep embedding, attention at chosen levels
  and in the middle block, skip concatenation, a zero-initialised output conv), fed the
  image channels with the noisy mask last (``in_channels = image + 1``), as the official
  code concatenates them. Its forward is MONAI's, with the two hooks below.
- **Highway**: nnU-Net's ``Generic_UNet`` (2D) on the image alone: per level two
  conv-Dropout2d(0.5)-BatchNorm-LeakyReLU(0.01) convs and a max-pool, a bottleneck of two
  convs, a decoder of bilinear up-sampling, skip concatenation and two convs (no dropout),
  a 1x1 conv to one channel, He init (``InitWeights_He(1e-2)``); widths ``highway_features *
  2**d`` up to 480. It returns the calibration *logits* (the official head applies a
  sigmoid; the loss and the samplers apply it here, so BCE-with-logits stays stable in BF16).
- **version v1** (``UNetModel_v1preview``, the paper's): after the highway's level-d
  max-pool, the main U-Net's features after its (d+1)-th down-sampling pass a 1x1 conv to the
  highway's width, the FF-Parser (initialised N(0, 0.02²), the official init), and gate the
  highway features: ``x * conv1x1(m) * mean_HW(m)``. The highway's bottleneck, through a 1x1
  conv to the main bottleneck's width, is added to the main path before its middle block.
  Here that conv is a trained module; the official code creates it with fresh random weights
  on every forward call (``Generic_UNet.forward``: ``conv_nd(2, x.size(1), 512, 1)`` inside
  ``forward``), so it is never trained and changes between calls: not reproduced.
- **version new** (``UNetModel_newpreview``, the official default, and what the group's
  ``org_medsegdiff_{S,B,L}.yaml`` use): the highway runs on its own (no gating, no FF-Parser)
  and returns its decoder features; those of the last two decoder levels, up-sampled to the
  input size, are added (``cat(a0, a0, a1)``, **detached**) to the main path after its first
  conv, so only the calibration loss trains the highway.

The official code hard-codes 256² inputs, 128 main channels and 5 highway pools; here they
follow the configuration: v1 needs ``highway_pools == len(channels) - 1`` (a gate per main
down-sampling), new needs ``4 * highway_features == channels[0]``. Deviations from the official
code besides the bottleneck conv: one output channel (ε; the official head has two, ε and the
learned-variance interpolation of ``learn_sigma``, trained with L_vb too), and MONAI's
residual blocks (no ``use_scale_shift_norm``, which the group's configs set).

``forward(x_t, timesteps, context=image) -> (ε, cal_logits)``; MONAI's ``DiffusionInferer``
drives it in ``crossattn`` mode, as our MedSegDiff.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from recipes.components.models.nets.medsegdiff import FFParser

VERSIONS = ("v1", "new")
MAX_HIGHWAY_FEATURES = 480  # nnU-Net's 2D cap (Generic_UNet.MAX_FILTERS_2D)
FF_INIT_STD = 0.02  # the official FFParser: randn * 0.02


def _convs(in_ch: int, out_ch: int, n: int, dropout: float) -> nn.Sequential:
    """nnU-Net's StackedConvLayers of ConvDropoutNormNonlin: conv 3x3, Dropout2d, BN, LReLU."""
    layers: list[nn.Module] = []
    for i in range(n):
        layers.append(nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1))
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += [nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1), nn.LeakyReLU(1e-2)]
    return nn.Sequential(*layers)


class Highway(nn.Module):
    """nnU-Net's Generic_UNet as MedSegDiff's highway (module doc)."""

    def __init__(
        self,
        in_channels: int,
        features: int,
        pools: int,
        image_size: Sequence[int],
        gate_channels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        widths = [min(features * 2**d, MAX_HIGHWAY_FEATURES) for d in range(pools)]
        self.widths = widths
        self.encoder = nn.ModuleList(
            _convs(in_channels if d == 0 else widths[d - 1], widths[d], 2, 0.5)
            for d in range(pools)
        )
        bottom = min(widths[-1] * 2, MAX_HIGHWAY_FEATURES)
        self.bottleneck = nn.Sequential(
            _convs(widths[-1], bottom, 1, 0.5), _convs(bottom, widths[-1], 1, 0.5)
        )
        self.decoder = nn.ModuleList(
            nn.Sequential(
                _convs(2 * widths[d], widths[d], 1, 0.0),
                _convs(widths[d], widths[d - 1] if d > 0 else widths[0], 1, 0.0),
            )
            for d in reversed(range(pools))
        )
        self.head = nn.Conv2d(widths[0], 1, 1, bias=False)
        # v1: a gate per level but the deepest, from the main U-Net's features there.
        self.gate_in = nn.ModuleList(
            nn.Conv2d(c, widths[d], 1) for d, c in enumerate(gate_channels)
        )
        self.gate_out = nn.ModuleList(nn.Conv2d(widths[d], 1, 1) for d in range(len(gate_channels)))
        self.ff_parser = nn.ModuleList(
            FFParser(widths[d], [s // 2 ** (d + 1) for s in image_size], init_std=FF_INIT_STD)
            for d in range(len(gate_channels))
        )
        for module in self.modules():  # nnU-Net's InitWeights_He(1e-2), gates included
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self, x: torch.Tensor, gates: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(bottleneck features, decoder features shallow-last, calibration logits)."""
        skips = []
        for d, block in enumerate(self.encoder):
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
            if d < len(gates):
                m = self.ff_parser[d](self.gate_in[d](gates[d]))
                x = x * self.gate_out[d](m) * m.mean(dim=(2, 3), keepdim=True)
        bottom = x = self.bottleneck(x)
        decoded = []
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
            decoded.append(x)
        return bottom, decoded, self.head(x)


class ORGMedSegDiff(nn.Module):
    """Official MedSegDiff, v1 or new (module doc). ``channels``: the main U-Net's widths per
    level (the official ``model_channels * channel_mult``); ``attention_levels``: where it has
    self-attention; ``num_head_channels``: per level (the official ``num_heads`` 1 is the
    level's width)."""

    def __init__(
        self,
        image_size: int | Sequence[int],
        in_channels: int,
        version: str = "new",
        channels: Sequence[int] = (128, 128, 256, 256, 512, 512),
        attention_levels: Sequence[bool] = (False, False, False, False, True, False),
        num_res_blocks: int = 2,
        num_head_channels: int | Sequence[int] = (128, 128, 256, 256, 512, 512),
        norm_num_groups: int = 32,
        highway_features: int = 32,
        highway_pools: int = 5,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"ORGMedSegDiff is 2D (nnU-Net's 2D highway), got {spatial_dims}")
        if version not in VERSIONS:
            raise ValueError(f"model.version must be one of {VERSIONS}, not {version!r}")
        size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        deepest = max(len(channels) - 1, highway_pools)
        if any(s % 2**deepest for s in size):
            raise ValueError(f"image_size {size} must be divisible by 2**{deepest}")
        if version == "v1" and highway_pools != len(channels) - 1:
            raise ValueError(
                f"version v1 gates the highway with each main down-sampling: highway_pools "
                f"must be len(channels) - 1 = {len(channels) - 1}, not {highway_pools}"
            )
        if version == "new" and (4 * highway_features != channels[0] or highway_pools < 3):
            raise ValueError(
                "version new adds cat(a0, a0, a1) of the highway (2 x highway_features + "
                "2 x highway_features channels) to the first main features: "
                f"4 x highway_features must equal channels[0] ({channels[0]}) and "
                "highway_pools be >= 3"
            )
        self.version, self.size = version, size
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=in_channels + 1,
            out_channels=1,
            num_res_blocks=num_res_blocks,
            channels=list(channels),
            attention_levels=list(attention_levels),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )
        # v1: gates at highway levels 0 .. pools-2, from the main features after down-
        # samplings 1 .. pools-1 (official: hs[3], hs[6], hs[9], hs[12] at 256^2).
        gates = list(channels[: highway_pools - 1]) if version == "v1" else []
        self.highway = Highway(in_channels, highway_features, highway_pools, size, gates)
        # v1: the highway's bottleneck into the main bottleneck (official: a fresh random conv).
        self.bottleneck_in = (
            nn.Conv2d(self.highway.widths[-1], channels[-1], 1) if version == "v1" else None
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the noisy mask (B, 1, H, W); context: the image. (ε, calibration logits)."""
        if context is None:
            raise ValueError("ORGMedSegDiff needs the image as context")
        if list(x.shape[-2:]) != self.size:
            raise ValueError(
                f"ORGMedSegDiff built for {self.size} inputs, got {list(x.shape[-2:])}; "
                "it takes inputs of model.image_size only"
            )
        u = self.unet
        emb = get_timestep_embedding(timesteps, u.block_out_channels[0]).to(x.dtype)
        emb = u.time_embed(emb)
        h = u.conv_in(torch.cat([context, x], dim=1))  # the mask last, as the official code
        if self.version == "new":
            _, decoded, cal = self.highway(context)
            a0, a1 = (F.interpolate(f, size=self.size, mode="bilinear") for f in decoded[-2:-4:-1])
            h = h + torch.cat([a0, a0, a1], dim=1).detach()
        skips, gates = [h], []
        for block in u.down_blocks:
            h, res = block(hidden_states=h, temb=emb, context=None)
            skips.extend(res)
            if block.downsampler is not None:
                gates.append(h)
        if self.version == "v1":
            bottom, _, cal = self.highway(context, gates[: len(self.highway.gate_in)])
            assert self.bottleneck_in is not None
            h = h + self.bottleneck_in(bottom)
        h = u.middle_block(hidden_states=h, temb=emb, context=None)
        for block in u.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            h = block(hidden_states=h, res_hidden_states_list=res, temb=emb, context=None)
        return u.out(h), cal
