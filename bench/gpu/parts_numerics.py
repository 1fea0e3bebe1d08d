"""Part 8: the BF16 numerics guard.

cuDNN's BF16 ``conv3d`` has shipped silent errors (pytorch/pytorch#163539: wrong outputs
for large inputs with cuDNN 9.10.2), so a BF16 study needs evidence that this GPU, driver,
torch and cuDNN compute what FP32 computes. Two checks, with the torch and cuDNN versions
recorded beside them:

- **the recipe's step**: one step in BF16 and one in FP32 from the same weights on the same
  batch, for SegResNet, DynUNet and MedNeXt-B at the study patch: the losses, the gradient
  norms and the gradients' direction must agree within the tolerances below;
- **the issue's convolution**: its reproducer's conv3d (16 -> 16 channels, kernel 1×3×3, an
  input of 124×1282×722), BF16 through cuDNN against the same BF16-rounded inputs in FP32
  with TF32 off, element by element.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import Row
from bench.gpu.harness import Ctx, Deadline, PartRecord, item
from bench.gpu.parts_train import MODELS, study
from bench.gpu.recipe import build_trainee, one_step, recipe_kernels, seg_config, synthetic_batch

# Tolerances of the step check. BF16 keeps 8 significant bits (unit roundoff 2^-8 ≈ 3.9e-3)
# and convolutions accumulate in FP32, so a layer's output is off by a few roundoffs, which
# compound over the network's depth and again in backward. The loss, a mean over the batch,
# stays within 2e-2 (five roundoffs) and the gradient norm within 5e-2. The direction is
# noisier: at initialisation, on random data, a weight's gradient is a sum of many nearly
# cancelling terms, and the rounding noise shows in it (on a CPU at tiny sizes: per-layer
# cosines 0.96-0.98, the whole gradient 0.985); 0.95 leaves room for that. A kernel that
# computes wrong values moves all three by far more, and the convolution check below
# compares every element of the shape that went wrong.
LOSS_RTOL = 2e-2
GRAD_NORM_RTOL = 5e-2
GRAD_COSINE_MIN = 0.95

# The convolution check: the reference takes the same BF16-rounded inputs in FP32, so the
# only differences are the order of the FP32 accumulation and the output's rounding to BF16
# (at most 2^-9 relative): torch.testing's BF16 tolerances leave no correct element out.
CONV_RTOL, CONV_ATOL = 1.6e-2, 1e-3
ISSUE_SHAPE = (1, 16, 124, 1282, 722)  # pytorch/pytorch#163539's reproducer
TINY_SHAPE = (1, 16, 4, 34, 34)


@contextlib.contextmanager
def ieee_fp32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in true FP32 (no TF32) for the reference, then as before. torch >=
    2.9 has a per-operator flag, and refuses reads of the legacy one once it was set."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        before = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = before
    else:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield


def _sgd_lr1(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD at lr 1 and nothing else: the step's update ``w_before - w_after`` is the
    gradient itself, read back without touching the recipe's loop."""
    return torch.optim.SGD(model.parameters(), lr=1.0)


def _step_gradient(
    trainee: Any, batch: dict[str, torch.Tensor]
) -> tuple[float, list[torch.Tensor]]:
    before = [p.detach().clone() for p in trainee.model.parameters()]
    _, loss = one_step(trainee, batch)
    after = trainee.model.parameters()
    return loss, [(b - p.detach()).double().flatten() for b, p in zip(before, after, strict=True)]


def _compare(g32: list[torch.Tensor], g16: list[torch.Tensor]) -> dict[str, float]:
    a, b = torch.cat(g32), torch.cat(g16)
    n32, n16 = float(a.norm()), float(b.norm())
    # Per tensor, among those carrying >= 1 % of the gradient's squared norm: informational.
    big = [(x, y) for x, y in zip(g32, g16, strict=True) if float(x.norm()) ** 2 >= 0.01 * n32**2]
    worst = min((float(F.cosine_similarity(x, y, dim=0)) for x, y in big), default=1.0)
    return {
        "grad_norm_fp32": n32,
        "grad_norm_bf16": n16,
        "grad_norm_rel_diff": abs(n16 - n32) / n32,
        "grad_cosine": float(torch.dot(a, b) / (n32 * n16)),
        "worst_tensor_cosine": worst,
    }


def _step_check(ctx: Ctx, rec: PartRecord, dl: Deadline, model: str) -> None:
    shape = study(ctx)
    dl.require(f"{model} step check")
    torch.manual_seed(0)
    from recipes.components.models.build import build_model

    base = build_model(seg_config(model, shape.side, "fp32", ctx.tiny).model).to(ctx.device)
    got: dict[str, tuple[float, list[torch.Tensor]]] = {}
    for amp in ("fp32", "bf16"):
        cfg = seg_config(model, shape.side, amp, ctx.tiny)
        trainee = build_trainee(cfg, ctx.device, optimizer=_sgd_lr1, model=copy.deepcopy(base))
        with recipe_kernels(ctx.device, amp):
            got[amp] = _step_gradient(trainee, synthetic_batch(cfg, shape.batch, ctx.device))
        del trainee
    (l32, g32), (l16, g16) = got["fp32"], got["bf16"]
    v = {"loss_fp32": l32, "loss_bf16": l16, "loss_rel_diff": abs(l16 - l32) / abs(l32)}
    v |= _compare(g32, g16)
    ok = (
        v["loss_rel_diff"] <= LOSS_RTOL
        and v["grad_norm_rel_diff"] <= GRAD_NORM_RTOL
        and v["grad_cosine"] >= GRAD_COSINE_MIN
    )
    rec.rows.append(
        Row(
            f"BF16 numerics, {model} {shape.side}³×{shape.batch}: one step",
            f"loss {l16:.5f}, |g| {v['grad_norm_bf16']:.4g}",
            f"loss {l32:.5f}, |g| {v['grad_norm_fp32']:.4g}",
            f"Δloss {v['loss_rel_diff']:.1e}, Δ|g| {v['grad_norm_rel_diff']:.1e}, "
            f"cos {v['grad_cosine']:.4f}",
            f"≤ {LOSS_RTOL:g}, ≤ {GRAD_NORM_RTOL:g}, ≥ {GRAD_COSINE_MIN:g}",
            ok,
            "the recipe's step from the same weights on the same batch: relative differences "
            "of the loss and of the gradient norm, cosine of the gradients (the worst tensor "
            f"carrying ≥ 1 % of it: {v['worst_tensor_cosine']:.4f})",
            v,
        )
    )


def _conv_check(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    shape = TINY_SHAPE if ctx.tiny else ISSUE_SHAPE
    dl.require("conv3d check")
    gen = torch.Generator(device=ctx.device).manual_seed(42)
    c = shape[1]
    x = torch.randn(shape, generator=gen, device=ctx.device, dtype=torch.bfloat16)
    weight = (torch.rand(c, c, 1, 3, 3, generator=gen, device=ctx.device) - 0.5) / 6
    w16 = weight.bfloat16()
    with recipe_kernels(ctx.device, "bf16"):
        out16 = F.conv3d(x, w16)
    x32 = x.float()
    del x
    with ieee_fp32_convolutions():
        ref = F.conv3d(x32, w16.float())
    del x32
    mismatched, worst, err2, ref2 = 0, 0.0, 0.0, 0.0
    for z in range(0, ref.shape[2], 8):  # in slabs: no second full-size FP32 tensor
        r, o = ref[:, :, z : z + 8], out16[:, :, z : z + 8].float()
        diff = (o - r).abs()
        mismatched += int((diff > CONV_ATOL + CONV_RTOL * r.abs()).sum())
        worst = max(worst, float(diff.max()))
        err2 += float((diff.double() ** 2).sum())
        ref2 += float((r.double() ** 2).sum())
    total = ref.numel()
    del ref, out16
    rel_l2 = (err2 / ref2) ** 0.5
    rec.rows.append(
        Row(
            f"BF16 conv3d, pytorch#163539's shape {list(shape)}",
            f"{mismatched} of {total:,} elements off",
            "FP32 (TF32 off), same BF16 inputs",
            f"max |Δ| {worst:.2e}, rel L2 {rel_l2:.1e}",
            f"0 off (rtol {CONV_RTOL:g}, atol {CONV_ATOL:g})",
            mismatched == 0,
            ("tiny shape on the CPU: the code path only; " if ctx.tiny else "")
            + "16 -> 16 channels, kernel 1×3×3, the issue's reproducer",
            {
                "shape": list(shape),
                "mismatched": mismatched,
                "elements": total,
                "max_abs_diff": worst,
                "rel_l2": rel_l2,
            },
        )
    )


def bf16_numerics(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    for model in MODELS:
        with item(rec, model):
            _step_check(ctx, rec, dl, model)
    with item(rec, "conv3d"):
        _conv_check(ctx, rec, dl)
    rec.details |= {
        "shape": study(ctx).__dict__,
        "tolerances": {
            "loss_rtol": LOSS_RTOL,
            "grad_norm_rtol": GRAD_NORM_RTOL,
            "grad_cosine_min": GRAD_COSINE_MIN,
            "conv_rtol": CONV_RTOL,
            "conv_atol": CONV_ATOL,
        },
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_cuda": torch.version.cuda,
    }
