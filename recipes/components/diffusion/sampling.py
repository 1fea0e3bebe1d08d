"""The reverse process: from Gaussian noise to a mask, conditioned on the image.

A loop over the sampler's timesteps with MONAI's ``scheduler.step``, rather than
``DiffusionInferer.sample``, for three things the latter has no argument for: DDIM's ``eta``
and a ``torch.Generator`` (so sampling neither reads nor advances the global RNG that
training resumes from), and the sample as it stood before the last step (the "snow" check).

The network runs under the training's autocast (``amp``): BF16 when the run trains in BF16,
which is what keeps validation within the memory training fits in. The scheduler's update
itself is a few elementwise ops and stays in float32, so the samples do not drift by
BF16 rounding over 50 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.schedulers import DDIMScheduler, Scheduler
from torch import nn

from recipes.components.diffusion.models import denoise
from recipes.components.training.step import autocast


@dataclass
class Samples:
    """final: x_0 after the last step; before_last: the sample entering the last step (for
    DDIM, its noise level is the last-but-one timestep's). Both float32, in [-1, 1]-ish."""

    final: torch.Tensor
    before_last: torch.Tensor


@torch.no_grad()
def sample(
    net: nn.Module,
    mode: str,
    sampler: Scheduler,
    image: torch.Tensor,
    amp: str,
    generator: torch.Generator,
    eta: float = 0.0,
    mask_channels: int = 1,
) -> Samples:
    """One mask sample per image of the batch; deterministic for a given generator state."""
    shape = (image.shape[0], mask_channels, *image.shape[2:])
    x = torch.randn(shape, generator=generator, device=image.device)
    timesteps = [int(t) for t in sampler.timesteps]
    extra = {"eta": float(eta)} if isinstance(sampler, DDIMScheduler) else {}
    before = x
    for i, t in enumerate(timesteps):
        if i == len(timesteps) - 1:
            before = x
        batch_t = torch.full((shape[0],), t, device=image.device, dtype=torch.long)
        with autocast(image.device, amp):
            output = denoise(net, mode, x, batch_t, image)
        x, _ = sampler.step(output.float(), t, x, generator=generator, **extra)
    return Samples(final=x, before_last=before)
