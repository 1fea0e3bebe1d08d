"""Which timesteps a DDIM sampler visits, and a DDIM step between any two of them.

``diffusion.timestep_spacing`` picks the ``sampling_steps`` timesteps out of ``timesteps``
(T = 1000, n = 50 below):

- ``trailing``: ``T-1, T-1-T//n, ..., T//n-1`` (999, 979, ..., 19): the stride MONAI's
  ``DDIMScheduler.step`` assumes, ending on the clean sample; the set lucidrains'
  med-seg-diff-pytorch visits. The recipe's default.
- ``leading``: improved-diffusion's ``"ddimN"`` respacing (``respace.py::space_timesteps``):
  the integer stride that gives exactly n steps, from 0: 980, 960, ..., 20, 0.
- ``linspace``: improved-diffusion's section-count respacing ``"N"`` (one section, a
  fractional stride of (T-1)/(n-1), rounded): 999, 979, 958, ..., 20, 0, gaps of 20 or 21.
  MONAI's own ``DDIMScheduler.set_timesteps`` gives exactly this list. It is what the
  MedSegDiff group ran: ``timestep_respacing: "50"`` in their
  ``configs/diffusion/openai_ddim_50steps.yaml`` (minanessiem/medseg-diffusion_ISLES24 @
  58ef119), the ``tr50`` of their run names.

:class:`KeptStepsDDIM` is MONAI's ``DDIMScheduler`` with one change to ``step``: it goes
from each visited timestep to the *next one in the list* (MONAI's goes back ``T // n``
whatever the list, which is wrong where the gaps differ, as in ``linspace``), as
improved-diffusion's ``SpacedDiffusion`` does; after the last listed step it lands on the
clean sample (alpha_bar = 1). With ``eps_from_clipped_x0`` the noise estimate is re-derived
from the clipped x_0 estimate before the update, as improved-diffusion's ``ddim_sample`` does
(``_predict_eps_from_xstart``; diffusers' ``use_clipped_model_output``); MONAI keeps the
network's own.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler

SPACINGS = ("trailing", "leading", "linspace")


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> set[int]:
    """improved-diffusion's ``respace.space_timesteps`` (openai/improved-diffusion @ 1bc7bbb,
    MIT licence; the MedSegDiff repositories carry identical copies): ``"ddimN"`` is the
    integer stride from the DDIM paper, else each of the equal sections of the chain is
    strided to its count with a fractional stride, rounded."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(stride * k) for k in range(count)]
        start += size
    return set(steps)


def sampling_timesteps(num_timesteps: int, steps: int, spacing: str) -> torch.Tensor:
    """The visited timesteps, from the noisiest down (module doc)."""
    if spacing == "trailing":
        return torch.arange(num_timesteps - 1, -1, -(num_timesteps // steps))[:steps]
    if spacing == "leading":
        try:
            kept = space_timesteps(num_timesteps, f"ddim{steps}")
        except ValueError:
            raise ValueError(
                f"diffusion.timestep_spacing=leading: no integer stride gives exactly {steps} "
                f"of {num_timesteps} steps (improved-diffusion's ddim{steps}); use trailing "
                "or linspace"
            ) from None
    elif spacing == "linspace":
        kept = space_timesteps(num_timesteps, str(steps))
    else:
        raise ValueError(
            f"diffusion.timestep_spacing must be one of {', '.join(SPACINGS)}, not {spacing!r}"
        )
    return torch.tensor(sorted(kept, reverse=True))


class KeptStepsDDIM(DDIMScheduler):
    """MONAI's DDIM, stepping between the listed timesteps (module doc)."""

    def __init__(self, *args: object, eps_from_clipped_x0: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.eps_from_clipped_x0 = bool(eps_from_clipped_x0)
        self._previous: dict[int, int] = {}

    def use_timesteps(self, timesteps: torch.Tensor) -> None:
        """Visit exactly ``timesteps`` (descending, distinct, in [0, T))."""
        listed = [int(t) for t in timesteps]
        if sorted(set(listed), reverse=True) != listed or not 0 <= listed[-1] <= listed[0] < len(
            self.alphas_cumprod
        ):
            raise ValueError(f"timesteps must descend within [0, {len(self.alphas_cumprod)})")
        self.timesteps = torch.tensor(listed)
        self.num_inference_steps = len(listed)
        self._previous = dict(zip(listed, [*listed[1:], -1], strict=True))

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM's update (Song et al. 2021, eq. 12 and 16) from ``timestep`` to the next
        listed one; (x_prev, x_0 estimate)."""
        prev = self._previous.get(int(timestep))
        if prev is None:
            raise ValueError(f"timestep {timestep} is not one this sampler visits")
        a_t = self.alphas_cumprod[timestep]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        kind = self.prediction_type
        if kind == "epsilon":
            x0 = (sample - (1 - a_t) ** 0.5 * model_output) / a_t**0.5
            eps = model_output
        elif kind == "sample":
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        else:  # v_prediction
            x0 = a_t**0.5 * sample - (1 - a_t) ** 0.5 * model_output
            eps = a_t**0.5 * model_output + (1 - a_t) ** 0.5 * sample
        if self.clip_sample:
            x0 = torch.clamp(x0, self.clip_sample_values[0], self.clip_sample_values[1])
            if self.eps_from_clipped_x0:
                eps = (sample - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        sigma = eta * self._get_variance(timestep, prev) ** 0.5
        out = a_prev**0.5 * x0 + (1 - a_prev - sigma**2).clamp_min(0) ** 0.5 * eps
        if eta > 0:
            noise = torch.randn(
                model_output.shape,
                dtype=model_output.dtype,
                generator=generator,
                device=model_output.device,
            )
            out = out + sigma * noise
        return out, x0
