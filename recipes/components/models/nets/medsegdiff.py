"""MedSegDiff (Wu et al. 2023, arXiv 2211.00611): a denoising U-Net for segmentation masks,
conditioned on the image through a second encoder.

Two encoders run side by side, one on the noisy mask ``x_t``, one on the image. At every level
MedSegDiff's *dynamic conditional encoding* fuses them: the mask features go through the
FF-Parser (a learnable filter in Fourier space, which can damp the high-frequency noise of
``x_t``), then ``LN(mask) * LN(image)`` is an affine map that re-weights the image features,
and a residual block mixes the result into the image stream. The decoder's skip at each level
carries the mask features plus these fused image features (lucidrains' med-seg-diff-pytorch
skips the mask stream only, unless ``skip_connect_condition_fmaps``, which concatenates;
summing keeps the decoder's widths those of a plain U-Net). At the bottleneck the two
streams are added and pass a transformer (MONAI's ``SpatialTransformer``).

Which source each part follows (checked against lucidrains/med-seg-diff-pytorch @ 618e6a4,
the group's deepmancer-derived ``src/models/MedSegDiff`` @ 58ef119 and the official
MedicineToken/MedSegDiff @ b4aee37): two encoders, FF-Parser on the mask stream, identity
FF-Parser init, mask diffused in [-1, 1], transformer bottleneck, the fusion
``LN(FF(m)) * LN(i) * i`` (the paper's Eq. 3): lucidrains'. The FF-Parser's complex
half-spectrum weight and the zero-initialised output conv: the official code's; LayerNorm
over (C, H, W) is the official code's (unused) ``enhance``, where lucidrains normalises the
channels of each pixel. Own choices: one MONAI residual block per level and stream
(lucidrains: two, plus linear attention), widths 16/32/64/128 for "16c" (the seed's
"16→32→64→128"; lucidrains' default ``dim_mults`` give 16/16/32/64, mid 128), and a
time-conditioned block after the fusion (lucidrains' has no time input there). The group's
copy differs from lucidrains in its fusion ``LN(x) * LN(i) * LN(i)`` and in a time embedding
linear in t; neither is copied here.

Everything but the FF-Parser and the fusion is MONAI: ``DiffusionUNetResnetBlock`` (time-
conditioned residual blocks), ``DiffusionUnetDownsample``, ``SpatialTransformer`` and the
sinusoidal ``get_timestep_embedding``. The FF-Parser's filter has the feature map's size, so
the network takes inputs of ``image_size`` only (sliding windows cover larger slices).

The signature is MONAI's ``DiffusionModelUNet``'s, ``forward(x, timesteps, context)``, with
the image as ``context``, so MONAI's ``DiffusionInferer`` drives it (mode ``crossattn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUnetDownsample,
    DiffusionUNetResnetBlock,
    SpatialTransformer,
    get_timestep_embedding,
    zero_module,
)
from torch import nn


class FFParser(nn.Module):
    """A learnable complex filter on the 2D spectrum of a (C, H, W) feature map.

    Parametrised like the official MedSegDiff code (``FFParser`` in ``guided_diffusion/
    unet.py`` of MedicineToken/MedSegDiff @ b4aee37): a complex weight (C, H, W/2+1) that
    multiplies the rfft2 (``ortho``) half spectrum, so official weights load 1:1.
    By default it starts as the identity (weight 1 + 0i), as lucidrains' med-seg-diff-pytorch
    (``Conditioning.ff_parser_attn_map = ones``, a real map over the full fft2 spectrum) and
    the group's copy of it start; ``init_std`` instead draws each component from
    N(0, init_std²), as the official code does (``randn * 0.02``: at init it passes about 3 %
    of its input, with random phase). A real full-spectrum map M (lucidrains') equals this
    filter with weight ``(M + M[-k]) / 2`` on the half spectrum. The FFT runs in float32 with
    autocast off: torch has no bfloat16 FFT, and a float16 one only for powers of two on CUDA.
    """

    def __init__(self, channels: int, size: Sequence[int], init_std: float | None = None) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        weight = torch.zeros(channels, self.size[0], self.size[1] // 2 + 1, 2)
        if init_std is None:
            weight[..., 0] = 1.0  # real part 1, imaginary 0
        else:
            weight.normal_(0.0, float(init_std))
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"FF-Parser built for {self.size} feature maps, got {tuple(x.shape[-2:])}; "
                "MedSegDiff takes inputs of model.image_size only"
            )
        with torch.autocast(x.device.type, enabled=False):
            spectrum = torch.fft.rfft2(x.float(), norm="ortho")
            spectrum = spectrum * torch.view_as_complex(self.weight.float())
            out = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return out.to(x.dtype)


class DynamicFusion(nn.Module):
    """Dynamic conditional encoding at one level: the new image-stream features."""

    def __init__(self, channels: int, size: Sequence[int], temb: int, groups: int) -> None:
        super().__init__()
        self.ff_parser = FFParser(channels, size)
        # GroupNorm with one group: LayerNorm over (C, H, W), as the paper's LN.
        self.norm_mask = nn.GroupNorm(1, channels)
        self.norm_image = nn.GroupNorm(1, channels)
        self.block = DiffusionUNetResnetBlock(2, channels, temb, channels, norm_num_groups=groups)

    def forward(self, mask: torch.Tensor, image: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        affine = self.norm_mask(self.ff_parser(mask)) * self.norm_image(image)
        return self.block(affine * image, emb)


def _conv(in_ch: int, out_ch: int) -> Convolution:
    return Convolution(2, in_ch, out_ch, strides=1, kernel_size=3, padding=1, conv_only=True)


class MedSegDiff(nn.Module):
    """Predicts the noise (or x_0 / v) of a noisy mask given the image; see the module doc.

    channels: per level (4 levels: 16, 32, 64, 128); image_size: the (square or [H, W]) input,
    divisible by 2 ** (levels - 1); time_embed_dim: width of the timestep embedding;
    num_heads x head_dim: the bottleneck transformer's attention (its inner width);
    bottleneck_layers: transformer layers; upcast_attention: attention softmax in float32
    (MONAI's option), the usual remedy when BF16 attention overflows.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        in_channels: int,
        mask_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        time_embed_dim: int = 128,
        num_heads: int = 6,
        head_dim: int = 4,
        bottleneck_layers: int = 1,
        norm_num_groups: int = 8,
        upcast_attention: bool = False,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"MedSegDiff is 2D (its FF-Parser is a 2D FFT), got {spatial_dims}")
        size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        levels = len(channels)
        if any(s % 2 ** (levels - 1) for s in size):
            raise ValueError(f"image_size {size} must be divisible by 2**{levels - 1}")
        self.time_embed_dim = time_embed_dim
        self.time_embed = nn.Sequential(
            nn.Linear(time_embed_dim, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        self.mask_in = _conv(mask_channels, channels[0])
        self.image_in = _conv(in_channels, channels[0])

        def res(in_ch: int, out_ch: int) -> DiffusionUNetResnetBlock:
            return DiffusionUNetResnetBlock(
                2, in_ch, time_embed_dim, out_ch, norm_num_groups=norm_num_groups
            )

        self.mask_down, self.image_down, self.fusion = nn.ModuleList(), nn.ModuleList(), []
        self.mask_pool, self.image_pool = nn.ModuleList(), nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            self.mask_down.append(res(prev, ch))
            self.image_down.append(res(prev, ch))
            level_size = [s // 2**i for s in size]
            self.fusion.append(DynamicFusion(ch, level_size, time_embed_dim, norm_num_groups))
            if i < levels - 1:
                self.mask_pool.append(DiffusionUnetDownsample(2, ch, use_conv=True))
                self.image_pool.append(DiffusionUnetDownsample(2, ch, use_conv=True))
            prev = ch
        self.fusion = nn.ModuleList(self.fusion)

        self.mid_in = res(channels[-1], channels[-1])
        self.mid_attn = SpatialTransformer(
            2,
            channels[-1],
            num_attention_heads=num_heads,
            num_head_channels=head_dim,
            num_layers=bottleneck_layers,
            norm_num_groups=norm_num_groups,
            upcast_attention=upcast_attention,
        )
        self.mid_out = res(channels[-1], channels[-1])

        # Decoder level i takes the level below (or the bottleneck) plus the skip of level i.
        self.up = nn.ModuleList(
            res(channels[min(i + 1, levels - 1)] + ch, ch) for i, ch in enumerate(channels)
        )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[0]),
            nn.SiLU(),
            zero_module(_conv(channels[0], out_channels)),  # starts by predicting 0
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: the noisy mask (B, 1, H, W); timesteps: (B,) or (1,); context: the image."""
        if context is None:
            raise ValueError("MedSegDiff needs the image as context")
        emb = get_timestep_embedding(timesteps, self.time_embed_dim).to(x.dtype)
        emb = self.time_embed(emb)
        mask, image = self.mask_in(x), self.image_in(context)
        skips = []
        for i, fusion in enumerate(self.fusion):
            mask = self.mask_down[i](mask, emb)
            image = fusion(mask, self.image_down[i](image, emb), emb)
            skips.append(mask + image)
            if i < len(self.mask_pool):
                mask, image = self.mask_pool[i](mask), self.image_pool[i](image)
        h = self.mid_out(self.mid_attn(self.mid_in(mask + image, emb)), emb)
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([h, skips[i]], dim=1), emb)
            if i > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(h)
