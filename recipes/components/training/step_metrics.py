"""What the optimizer did at each step: the gradient norm, clipping, each group's lr.

Logged to MLflow (names as the SegTHOR group watched them in W&B):

- every ``training.step_metrics_every`` optimizer steps (1: every step; null: never), with
  the optimizer step as MLflow's step: ``grad_norm``, the global L2 norm of the gradients
  *before* clipping (after fp16 unscaling, in the units ``training.grad_clip_norm`` is
  given in), and ``lr/<group>``, the learning rate each param group stepped with
  (``lr/early_encoder``, ``lr/decoder``, ``lr/early_encoder.0`` for the layers of a graded
  role; ``lr/all`` without layer-wise groups);
- once per epoch, with the epoch as step: ``lr``, the schedule's base learning rate (what
  ``optimizer.lr`` names; a group's lr is it times the group's multiplier),
  ``grad_norm_mean`` / ``grad_norm_max`` over the epoch's steps and, when clipping is on,
  ``grad_clipped_steps`` and ``grad_clipped_fraction``: how many of the epoch's optimizer
  steps had a norm above ``grad_clip_norm`` (clipping fired), and what share.

The per-step values are buffered and written in one batch after each checkpoint (epoch end,
step checkpoint, stop request), so a store write never waits inside a step, and a crash
loses no value that a resume would not log again: the steps after the last checkpoint are
trained, and logged, again. The epoch's running figures live in the epoch's state
(``loop.EpochState``), which a step checkpoint saves: a resumed epoch's figures are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.optim import Optimizer

if TYPE_CHECKING:
    from recipes.components.training.mlflow_logging import RunLogger


class GradFigures(Protocol):
    """The epoch's running gradient figures: ``loop.EpochState`` (not imported: the loop
    imports this module)."""

    grad_steps: int
    grad_norm_sum: float
    grad_norm_max: float
    grad_clipped: int


def group_names(optimizer: Optimizer) -> list[str]:
    """A name per param group: its ``name`` (layer-wise groups), else ``all`` for a single
    group, else ``group<i>``."""
    groups = optimizer.param_groups
    if len(groups) == 1 and "name" not in groups[0]:
        return ["all"]
    return [str(g.get("name") or g.get("role") or f"group{i}") for i, g in enumerate(groups)]


def group_scales(optimizer: Optimizer) -> list[float]:
    """Each group's multiplier of ``optimizer.lr`` (1 without layer-wise groups)."""
    return [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]


def grad_norm(params: Iterable[torch.nn.Parameter], clip: float | None) -> float:
    """The global L2 norm of the gradients before clipping; clips to ``clip`` when given."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if clip:
        return float(torch.nn.utils.clip_grad_norm_(params, float(clip)))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


class StepMetrics:
    """Per-step ``grad_norm`` / ``lr/<group>`` and the epoch's gradient figures (module doc).

    Built from the optimizer as it was built (names and multipliers are read then: a
    checkpoint's param groups may lack them). ``every``: log every N optimizer steps; None or
    0: keep the epoch figures only.
    """

    def __init__(self, optimizer: Optimizer, clip: float | None, every: int | None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)):
            raise ValueError(
                f"training.step_metrics_every must be an integer >= 0 or null, got {every!r}"
            )
        self.names = group_names(optimizer)
        self.scales = group_scales(optimizer)
        self.clip = float(clip) if clip else None
        self.every = every or 0
        self.rows: list[tuple[str, float, int]] = []
        self.state: GradFigures | None = None

    def base_lr(self, optimizer: Optimizer) -> float:
        """The schedule's lr: group 0's divided by its multiplier."""
        return float(optimizer.param_groups[0]["lr"]) / self.scales[0]

    def begin(self, state: GradFigures) -> None:
        """The epoch (or the rest of one) whose figures :meth:`record` adds to."""
        self.state = state

    def record(self, step: int, norm: float, optimizer: Optimizer) -> None:
        """Optimizer step ``step`` (1-based over the run) had gradient norm ``norm`` and
        steps with the groups' current lrs."""
        state = self.state
        if state is not None:
            state.grad_steps += 1
            if math.isfinite(norm):
                state.grad_norm_sum += norm
                state.grad_norm_max = max(state.grad_norm_max, norm)
            if self.clip is not None and norm > self.clip:
                state.grad_clipped += 1
        if self.every and step % self.every == 0:
            self.rows.append(("grad_norm", norm, step))
            for name, group in zip(self.names, optimizer.param_groups, strict=True):
                self.rows.append((f"lr/{name}", float(group["lr"]), step))

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's gradient figures (module doc); {} before any step."""
        state = self.state
        if state is None or state.grad_steps == 0:
            return {}
        out = {
            "grad_norm_mean": state.grad_norm_sum / state.grad_steps,
            "grad_norm_max": state.grad_norm_max,
        }
        if self.clip is not None:
            out["grad_clipped_steps"] = float(state.grad_clipped)
            out["grad_clipped_fraction"] = state.grad_clipped / state.grad_steps
        return out

    def flush(self, logger: RunLogger) -> None:
        """Write the buffered per-step values (one batch per MLflow limit) and forget them."""
        rows, self.rows = self.rows, []
        if rows:
            logger.log_series(rows)


def step_metrics_for(optimizer: Optimizer, tcfg: Any) -> StepMetrics:
    """The recipe's :class:`StepMetrics` from ``training.grad_clip_norm`` and
    ``training.step_metrics_every`` (default 1: every step)."""
    return StepMetrics(optimizer, tcfg.get("grad_clip_norm"), tcfg.get("step_metrics_every", 1))
