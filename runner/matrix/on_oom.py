"""The matrix's ``on_oom`` block and the remedy steps it names: what a cell that ran out of
memory is tried again with (runner.sweep.remedies applies them).

Each step reads the cell's composed config and returns the keys it changes (before, after),
or why it does not apply to this cell (a recipe without the key, a value that can't shrink).
A step either keeps the checkpoint of the earlier attempts valid (the attempt resumes it), or
not: then the attempt trains from scratch, its checkpoints and MLflow run set aside.

=====================  ======  =======  =========================================================
step                   memory  resumes  change
=====================  ======  =======  =========================================================
grad_checkpointing     gpu     yes      ``training.grad_checkpointing`` on: recompute activations
halve_batch            gpu     yes      ``training.batch_size`` / 2, ``accumulate_steps`` x 2: the
                                        same optimizer steps, schedule and epoch
smaller_val_batch      gpu     yes      ``training.val_batch_size`` (diffusion sampling) or
                                        ``training.sw_batch_size`` (sliding window) / 2
bf16                   gpu     no       ``training.amp`` fp32 -> bf16: other numerics
smaller_patch          gpu     no       ``training.patch_size`` / 2 (sides that stay multiples
                                        of 16): other inputs
fewer_workers          host    yes      ``training.num_workers`` / 2
no_persistent_workers  host    yes      ``training.persistent_workers`` off
smaller_prefetch       host    yes      ``training.prefetch_factor`` / 2 (null is torch's 2)
=====================  ======  =======  =========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field

StepName = Literal[
    "grad_checkpointing",
    "halve_batch",
    "smaller_val_batch",
    "bf16",
    "smaller_patch",
    "fewer_workers",
    "no_persistent_workers",
    "smaller_prefetch",
]
#: The default policy: the steps that keep the checkpoint valid, GPU ones then host ones.
DEFAULT_STEPS: tuple[StepName, ...] = (
    "grad_checkpointing",
    "halve_batch",
    "smaller_val_batch",
    "fewer_workers",
    "no_persistent_workers",
    "smaller_prefetch",
)

#: key -> (before, after) of a step that applies; a string says why it does not.
Change = dict[str, tuple[Any, Any]]


class OnOom(BaseModel):
    """``on_oom: {auto: true, max_tries: 2, steps: [grad_checkpointing, halve_batch]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auto: bool = Field(False, description="retry at once with the next remedy (a followed sweep)")
    max_tries: int = Field(2, ge=1, le=20, description="remedied attempts per cell at most")
    steps: list[StepName] = Field(default_factory=lambda: list(DEFAULT_STEPS), min_length=1)


def _get(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_MISSING)


_MISSING = object()


def _switch_on(key: str) -> Callable[[Any], Change | str]:
    def plan(cfg: Any) -> Change | str:
        value = _get(cfg, key)
        if value is _MISSING:
            return f"the recipe has no {key}"
        return f"{key} is already on" if value else {key: (value, True)}

    return plan


def _halve_batch(cfg: Any) -> Change | str:
    batch, acc = _get(cfg, "training.batch_size"), _get(cfg, "training.accumulate_steps")
    if batch is _MISSING or acc is _MISSING:
        return "the recipe has no training.batch_size and training.accumulate_steps"
    if batch < 2 or batch % 2:
        return f"training.batch_size={batch} can't be halved into equal micro-batches"
    return {
        "training.batch_size": (batch, batch // 2),
        "training.accumulate_steps": (acc, acc * 2),
    }


def _smaller_val_batch(cfg: Any) -> Change | str:
    for key in ("training.val_batch_size", "training.sw_batch_size"):
        value = _get(cfg, key)
        if value is not _MISSING:
            return {key: (value, value // 2)} if value >= 2 else f"{key}={value} is the least"
    return "the recipe has no training.val_batch_size or training.sw_batch_size"


def _bf16(cfg: Any) -> Change | str:
    amp = _get(cfg, "training.amp")
    if amp is _MISSING:
        return "the recipe has no training.amp"
    return {"training.amp": (amp, "bf16")} if amp == "fp32" else f"training.amp is {amp} already"


def _smaller_patch(cfg: Any) -> Change | str:
    patch = _get(cfg, "training.patch_size")
    if patch is _MISSING:
        return "the recipe has no training.patch_size"
    sides = list(patch)
    halved = [s // 2 if s % 32 == 0 else s for s in sides]
    if halved == sides:
        return f"training.patch_size={sides}: no side halves to a multiple of 16"
    return {"training.patch_size": (sides, halved)}


def _workers(cfg: Any) -> int:
    value = _get(cfg, "training.num_workers")
    return 0 if value is _MISSING or value is None else int(value)


def _fewer_workers(cfg: Any) -> Change | str:
    n = _workers(cfg)
    return {"training.num_workers": (n, n // 2)} if n else "training.num_workers is 0"


def _no_persistent(cfg: Any) -> Change | str:
    value = _get(cfg, "training.persistent_workers")
    if value is _MISSING:
        return "the recipe has no training.persistent_workers"
    if not _workers(cfg) or not value:
        return "no persistent loader workers"
    return {"training.persistent_workers": (True, False)}


def _smaller_prefetch(cfg: Any) -> Change | str:
    value = _get(cfg, "training.prefetch_factor")
    if value is _MISSING:
        return "the recipe has no training.prefetch_factor"
    if not _workers(cfg):
        return "no loader workers prefetch"
    current = 2 if value is None else int(value)  # torch's default
    return {"training.prefetch_factor": (value, current // 2)} if current > 1 else "prefetch is 1"


@dataclass(frozen=True)
class Step:
    name: str
    memory: Literal["gpu", "host"]  # the memory it saves
    resumes: bool  # whether the earlier attempts' checkpoint stays valid
    plan: Callable[[Any], Change | str]


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("grad_checkpointing", "gpu", True, _switch_on("training.grad_checkpointing")),
        Step("halve_batch", "gpu", True, _halve_batch),
        Step("smaller_val_batch", "gpu", True, _smaller_val_batch),
        Step("bf16", "gpu", False, _bf16),
        Step("smaller_patch", "gpu", False, _smaller_patch),
        Step("fewer_workers", "host", True, _fewer_workers),
        Step("no_persistent_workers", "host", True, _no_persistent),
        Step("smaller_prefetch", "host", True, _smaller_prefetch),
    )
}


def override(key: str, value: Any) -> str:
    """``key=value`` as Hydra reads it (``true``, ``null``, ``[16,16,16]``)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(str(v) for v in value) + "]"
    else:
        text = str(value)
    return f"{key}={text}"
