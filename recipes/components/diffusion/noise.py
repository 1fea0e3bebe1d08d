"""The noising process and the samplers from ``cfg.diffusion``, all MONAI schedulers.

Masks diffuse in [-1, 1]: a binary label ``y`` is ``x_0 = 2y - 1``, and a sample reads as
foreground where it is > 0. Training draws ``t`` uniformly from the ``timesteps`` of the
schedule (``noise_schedule``: MONAI's ``cosine``, ``linear_beta``, ...) and noises ``x_0``
with ``DDPMScheduler.add_noise``; validation samples with ``DDIMScheduler`` in
``sampling_steps`` (``eta`` 0: deterministic given the initial noise) or with the full
``DDPMScheduler`` chain (``sampler: ddpm``, which steps ``t -> t-1`` and so needs
``sampling_steps == timesteps``).

DDIM spacing (``timestep_spacing``: trailing | leading | linspace) and the DDIM step between
the visited timesteps: :mod:`recipes.components.diffusion.spacing`.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler
from omegaconf import DictConfig

from recipes.components.diffusion.spacing import KeptStepsDDIM, sampling_timesteps
from recipes.components.training.distributed import Dist

SAMPLERS = ("ddim", "ddpm")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# Floor of sqrt(alpha_bar) when recovering x_0 from a noise prediction for the auxiliary
# losses: 1/sqrt(alpha_bar) reaches 2e4 at t = T-1 on the cosine schedule, and that factor
# would multiply their gradients; the x_0 estimate is clamped to [-1, 1] anyway.
X0_SIGNAL_FLOOR = 1e-2


def build_schedulers(dcfg: DictConfig) -> tuple[DDPMScheduler, Scheduler]:
    """(the training scheduler that adds noise, the sampler set to its inference steps)."""
    if dcfg.sampler not in SAMPLERS:
        raise ValueError(f"diffusion.sampler must be one of {SAMPLERS}, got {dcfg.sampler!r}")
    if dcfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"diffusion.prediction_type must be one of {PREDICTION_TYPES}, "
            f"got {dcfg.prediction_type!r}"
        )
    common = {
        "num_train_timesteps": int(dcfg.timesteps),
        "schedule": str(dcfg.noise_schedule),
        "clip_sample": bool(dcfg.clip_sample),
        "prediction_type": str(dcfg.prediction_type),
    }
    steps = int(dcfg.sampling_steps)
    if not 1 <= steps <= common["num_train_timesteps"]:
        raise ValueError(f"diffusion.sampling_steps must be in 1..{dcfg.timesteps}, got {steps}")
    train = DDPMScheduler(**common)
    if dcfg.sampler == "ddpm":
        if steps != common["num_train_timesteps"]:
            raise ValueError(
                "sampler ddpm steps t -> t-1 through the whole chain: set "
                f"diffusion.sampling_steps={dcfg.timesteps}, or use sampler ddim for {steps}"
            )
        sampler: Scheduler = DDPMScheduler(**common)
        sampler.set_timesteps(steps)
        return train, sampler
    sampler = KeptStepsDDIM(**common, eps_from_clipped_x0=bool(dcfg.get("eps_from_clipped_x0")))
    spacing = str(dcfg.get("timestep_spacing", "trailing"))
    sampler.use_timesteps(sampling_timesteps(common["num_train_timesteps"], steps, spacing))
    return train, sampler


def step_seed(seed: int, step: int) -> int:
    """Seed of the noise and timesteps of one training step: a function of (seed, step), so
    a resumed run draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, step, 0x5EED]).generate_state(1)[0])


def mask_to_x0(label: torch.Tensor) -> torch.Tensor:
    """Binary foreground (label > 0) as x_0 in {-1, 1}, float32."""
    return (label > 0).float() * 2.0 - 1.0


def _alpha_bar(scheduler: Scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[t]
    return a.view(-1, *([1] * (like.ndim - 1)))


def training_target(
    scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the network regresses: the noise, x_0 itself, or the velocity."""
    kind = scheduler.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    a = _alpha_bar(scheduler, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predicted_x0(
    scheduler: DDPMScheduler, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The network's estimate of the clean mask, clamped to [-1, 1] as the samplers do."""
    kind = scheduler.prediction_type
    a = _alpha_bar(scheduler, t, x_t)
    if kind == "epsilon":
        x0 = (x_t - (1 - a).sqrt() * output) / a.sqrt().clamp_min(X0_SIGNAL_FLOOR)
    elif kind == "sample":
        x0 = output
    else:
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * output
    return x0.clamp(-1.0, 1.0)


def rank_rows(batch: int, per_item: int, dist: Dist) -> slice | torch.Tensor:
    """This rank's rows of a global batch of ``batch × world`` rows: the loader stacks
    ``per_item`` slices per volume and rank r holds global volumes r, r + world, ...
    (``data/samplers.py``)."""
    if not dist.active:
        return slice(None)
    per_item = per_item if batch % per_item == 0 else 1
    return torch.arange(batch * dist.world).view(-1, per_item)[dist.rank :: dist.world].flatten()
