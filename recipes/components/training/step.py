"""What one optimisation step needs in any recipe: autocast by name, plain tensors on the
device, fp32 outputs for the loss, and a named error when the loss stops being finite.

Mixed precision: bf16 autocast needs nothing else; fp16 autocast needs a GradScaler, since
float16 gradients underflow.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from monai.data import MetaTensor

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(Exception):
    """The loss (or a sample) became NaN/inf; the message says where."""


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """bf16/fp16 autocast (CPU or CUDA), or nothing for fp32."""
    if amp in AMP_DTYPES:
        return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
    if amp == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"training.amp must be bf16, fp16 or fp32, got {amp!r}")


def on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A plain tensor on ``device``: MetaTensor tracks metadata through every op, and the
    training math does not need it."""
    return (x.as_tensor() if isinstance(x, MetaTensor) else x).to(device, non_blocking=True)


def as_float(output: Any) -> Any:
    """The network output in fp32 (a tensor, or deep supervision's list of tensors), so the
    loss reduces in full precision."""
    if isinstance(output, (list, tuple)):
        return [o.float() for o in output]
    return output.float()


def optimizer_steps_per_epoch(batches: int, accumulate: int) -> int:
    return -(-batches // max(1, accumulate))
