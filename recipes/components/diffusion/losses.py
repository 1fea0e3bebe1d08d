"""The diffusion losses from ``cfg.loss``: MSE on the network's target (the noise, by
default), plus optional Dice and BCE on the mask the network implies.

``mse``: ``diffusion_weight * MSE``. ``mse_aux_light``: the same plus ``0.1 * Dice + 0.1 *
BCE`` on ``(x0_hat + 1) / 2``, where ``x0_hat`` is the clean mask recovered from the noise
prediction (clamped to [-1, 1]); the auxiliary terms ramp in linearly over
``aux_warmup_steps`` optimizer steps (the segmentation recipe's ``WeightedSum`` ramp), since
early x_0 estimates are noise. MSE on the noise is what sampling needs, but it weighs every
pixel alike and so barely registers a small lesion: the auxiliary terms put Dice itself into
the objective, which is the group's remedy for an MSE that does not track Dice.

``calibration_weight`` > 0 (``mse_with_calibration``, for denoisers with a calibration head:
ORGMedSegDiff) adds ``calibration_weight *`` a loss between the head's map and the mask:
``calibration_loss: mse`` is the official MedSegDiff's, ``mean((mask - sigmoid(cal))^2)``
(``training_losses_segmentation`` in ``guided_diffusion/gaussian_diffusion.py`` of
MedicineToken/MedSegDiff @ b4aee37, weight 10 in ``train_util.py``); ``bce`` is the group's
``CalibrationLoss`` (BCE with logits, ``src/losses/segmentation_losses.py`` of
minanessiem/medseg-diffusion_ISLES24 @ 58ef119), which its docstring calls official but is
not. From the first step, as both do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from omegaconf import DictConfig
from torch import nn

from recipes.components.training.losses import WeightedSum

CALIBRATION_LOSSES = ("mse", "bce")


class BinaryCrossEntropy(nn.Module):
    """BCE on probabilities (the x_0 estimate is already in [0, 1]), kept off 0 and 1."""

    def forward(self, prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(prob.clamp(1e-4, 1 - 1e-4), target)


class DiffusionLoss(nn.Module):
    """``forward`` returns (total, {"mse": ..., "dice": ..., "bce": ...}) in float32."""

    def __init__(
        self,
        diffusion_weight: float = 1.0,
        dice_weight: float = 0.0,
        bce_weight: float = 0.0,
        aux_warmup_steps: int = 0,
        calibration_weight: float = 0.0,
        calibration_loss: str = "mse",
    ) -> None:
        super().__init__()
        if calibration_loss not in CALIBRATION_LOSSES:
            raise ValueError(
                f"loss.calibration_loss must be one of {CALIBRATION_LOSSES}, "
                f"not {calibration_loss!r}"
            )
        self.diffusion_weight = float(diffusion_weight)
        self.calibration_weight = float(calibration_weight)
        self.calibration_loss = calibration_loss
        self.aux = WeightedSum(
            [DiceLoss(sigmoid=False, batch=True), BinaryCrossEntropy()],
            [float(dice_weight), float(bce_weight)],
            [0, 0],
            [int(aux_warmup_steps)] * 2,
        )

    def calibration(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The calibration loss of ``logits`` against the binary ``mask``, in float32."""
        logits, mask = logits.float(), mask.float()
        if self.calibration_loss == "bce":
            return F.binary_cross_entropy_with_logits(logits.clamp(-80.0, 80.0), mask)
        return F.mse_loss(torch.sigmoid(logits), mask)

    def set_step(self, step: int) -> None:
        """Optimizer steps done so far: where the auxiliary terms stand in their ramp."""
        self.aux.set_step(step)

    def forward(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        x0_hat: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        calibration: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """output/target: the network's prediction and its target. With ``x0_hat`` (in
        [-1, 1]) and the binary ``mask``, Dice and BCE of the implied mask are measured too
        (``parts``), and enter the total only while their ramped weight is > 0: an MSE-only
        run still logs how its x_0 estimate segments. ``calibration``: the logits of a
        calibration head, scored against ``mask`` (part ``cal``) whenever given."""
        mse = F.mse_loss(output.float(), target.float())
        total, parts = self.diffusion_weight * mse, {"mse": mse.detach()}
        if self.calibration_weight > 0 and calibration is None:
            raise ValueError(
                "loss.calibration_weight > 0 needs a denoiser with a calibration head "
                "(model=org_medsegdiff*)"
            )
        if calibration is not None and mask is not None:
            cal = self.calibration(calibration, mask)
            # Weight 0 still joins the graph: DDP needs every parameter (the head's) used.
            total = total + self.calibration_weight * cal
            parts["cal"] = cal.detach()
        if x0_hat is None or mask is None:
            if any(w > 0 for w in self.aux.weights):
                raise ValueError("the auxiliary losses need x0_hat and the mask")
            return total, parts
        prob = (x0_hat.float() + 1.0) / 2.0
        for name, factor, term in zip(
            ("dice", "bce"), self.aux.factors(), self.aux.terms, strict=True
        ):
            if factor > 0:
                value = term(prob, mask.float())
                total = total + factor * value
            else:
                with torch.no_grad():
                    value = term(prob, mask.float())
            parts[name] = value.detach()
        return total, parts


def build_diffusion_loss(loss_cfg: DictConfig) -> DiffusionLoss:
    """Any loss config with the four weights below is a diffusion loss (``mse`` and
    ``mse_aux_light`` ship; a heavier variant is one more YAML file)."""
    keys = ("diffusion_weight", "dice_weight", "bce_weight", "aux_warmup_steps")
    missing = [k for k in keys if k not in loss_cfg]
    if missing:
        raise ValueError(
            f"loss {loss_cfg.get('name')!r} is not a diffusion loss (no {', '.join(missing)}); "
            "the diffusion recipe's losses are mse, mse_aux_light and mse_with_calibration"
        )
    return DiffusionLoss(
        loss_cfg.diffusion_weight,
        loss_cfg.dice_weight,
        loss_cfg.bce_weight,
        loss_cfg.aux_warmup_steps,
        float(loss_cfg.get("calibration_weight", 0.0)),
        str(loss_cfg.get("calibration_loss", "mse")),
    )
