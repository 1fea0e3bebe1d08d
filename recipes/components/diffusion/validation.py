"""Validation of a diffusion segmenter on whole volumes, slice by slice.

As the segmentation recipe's 2D path does (nnU-Net's 2D configuration), every slice of a
validation volume is predicted, the slices are restacked and Dice is measured on the volume,
so ``val_dice`` compares with the segmentation recipe's cells. Within a slice, MONAI's
``sliding_window_inference`` covers it with windows of the training patch size (MedSegDiff
takes only its ``image_size``); each window is sampled ``num_samples`` times and the
ensemble of the samples, mapped to [0, 1], is the prediction (foreground > 0.5): their mean,
or with ``diffusion.fusion: staple`` the official MedSegDiff's fusion (:func:`fuse`).
Windows whose image is all zero (outside the brain of a skull-stripped perfusion map) are
background without sampling when ``training.val_skip_empty``.

Dice four ways, so a number compares with the group's as well as with the segmentation
recipe's: ``val_dice_2d_single`` / ``_ensemble`` (slice-wise, the group's "2D Dice":
``components/diffusion/slice_dice.py``) and ``val_dice_3d_single`` / ``_ensemble`` (Dice of
the restacked volume; ``val_dice`` is ``val_dice_3d_ensemble``, the runner's selection
metric), each of the first sample of every window and of the ensemble.

Per validation, beyond these: ``val_mse``, the training objective on the validation
slices (random t and noise from a fixed seed), to set against Dice; and the "snow" check on
the first sample of each window: ``val_last_step_dice_before`` / ``_after``, the volume Dice of
that sample before and after the last denoising step, and ``val_last_step_changed``, the
share of voxels whose label the last step flipped. Every validation draws the same noise
(``diffusion.val_seed``, and per volume its case), so a change of Dice between validations
is the model's doing, and a volume gets the same noise on whichever DDP rank samples it
(each samples its share of the volumes; the metrics are gathered, ``training/distributed.py``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.networks.schedulers import DDPMScheduler, Scheduler
from omegaconf import DictConfig
from torch import nn

from recipes.components.diffusion.models import denoise
from recipes.components.diffusion.noise import mask_to_x0, training_target
from recipes.components.diffusion.sampling import sample
from recipes.components.diffusion.slice_dice import SliceDice, empty_label_rule
from recipes.components.training.distributed import Dist
from recipes.components.training.metrics import SegMetrics, voxel_spacing
from recipes.components.training.step import Diverged, autocast, on_device

FUSIONS = ("mean", "staple")


@dataclass
class Validation:
    dice: torch.Tensor  # per foreground class, as the segmentation recipe reports it
    metrics: dict[str, float]
    # (image channel 0, truth, ensemble mean) of each volume's slice with the most lesion
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


class WindowPredictor:
    """``sliding_window_inference``'s predictor: windows of (image channels + label) in,
    (ensemble mean, first sample before / after the last step) out; keeps the MSE sums."""

    def __init__(
        self,
        net: nn.Module,
        mode: str,
        schedulers: tuple[DDPMScheduler, Scheduler],
        dcfg: DictConfig,
        amp: str,
        generator: torch.Generator,
        skip_empty: bool,
    ) -> None:
        self.net, self.mode, self.amp, self.generator = net, mode, amp, generator
        self.train_scheduler, self.sampler = schedulers
        self.num_samples, self.eta = int(dcfg.num_samples), float(dcfg.eta)
        self.fusion = str(dcfg.get("fusion", "mean"))
        if self.fusion not in FUSIONS:
            raise ValueError(f"diffusion.fusion must be one of {FUSIONS}, not {self.fusion!r}")
        self.skip_empty = skip_empty
        self.labelled = True  # windows end with the label channel
        self.mse_sum, self.mse_count, self.changed, self.voxels = 0.0, 0, 0, 0
        # DDP: a rank that saw NaN samples goes on, so that every rank reaches the check
        # after the loop (one rank raising alone would leave the others in a collective).
        self.defer_divergence = False
        self.nonfinite: str | None = None

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        # With the label as the last channel (validation), or the image alone (prediction).
        image, label = (windows[:, :-1], windows[:, -1:]) if self.labelled else (windows, None)
        out = torch.zeros(windows.shape[0], 3, *windows.shape[2:], device=windows.device)
        keep = image.flatten(1).abs().amax(dim=1) > 0 if self.skip_empty else None
        if keep is not None:
            if not keep.any():
                return out
            image = image[keep]
            label = None if label is None else label[keep]
        n, s = image.shape[0], self.num_samples
        samples = sample(
            self.net,
            self.mode,
            self.sampler,
            image.repeat_interleave(s, dim=0),
            self.amp,
            self.generator,
            self.eta,
        )
        for name, x in (("final", samples.final), ("before the last step", samples.before_last)):
            if not torch.isfinite(x).all():
                self.nonfinite = f"validation samples became NaN/inf ({name})"
                if not self.defer_divergence:
                    raise Diverged(self.nonfinite)
        final = samples.final.view(n, s, *samples.final.shape[1:])
        first_before = (samples.before_last.view_as(final)[:, 0] > 0).float()
        first_after = (final[:, 0] > 0).float()
        fused = fuse(((final + 1) / 2).clamp(0, 1), self.fusion)
        maps = torch.cat([fused, first_before, first_after], 1)
        if keep is None:
            out = maps
        else:
            out[keep] = maps
        self.changed += int((first_before != first_after).sum())
        self.voxels += first_after.numel()
        if label is not None:
            self._objective(image, label)
        return out

    @torch.no_grad()
    def _objective(self, image: torch.Tensor, label: torch.Tensor) -> None:
        """The training loss (MSE on the target) on these windows, at random timesteps."""
        x0 = mask_to_x0(label)
        sched = self.train_scheduler
        n, device = x0.shape[0], x0.device
        t = torch.randint(
            0, sched.num_train_timesteps, (n,), generator=self.generator, device=device
        )
        noise = torch.randn(x0.shape, generator=self.generator, device=x0.device)
        with autocast(x0.device, self.amp):
            output = denoise(self.net, self.mode, sched.add_noise(x0, noise, t), t, image)
        target = training_target(sched, x0, noise, t)
        self.mse_sum += float(F.mse_loss(output.float(), target, reduction="sum"))
        self.mse_count += target.numel()


def fuse(members: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """The ensemble's foreground map from its members (N, samples, 1, ...) in [0, 1]:
    their mean, or (``staple``) the official MedSegDiff's ``staple`` (``guided_diffusion/
    utils.py``), one majority-vote reweighting of the unthresholded members, which is
    exactly the square of their mean (not SimpleITK's STAPLE). Foreground: > 0.5."""
    mean = members.mean(dim=1)
    return mean * mean if how == "staple" else mean


def _two_class(prob: torch.Tensor) -> torch.Tensor:
    """A foreground probability as two-class scores, which ``SegMetrics`` argmaxes."""
    return torch.cat([1 - prob, prob], dim=1)


@torch.no_grad()
def validate(
    net: nn.Module,
    mode: str,
    schedulers: tuple[DDPMScheduler, Scheduler],
    loader: Any,
    device: torch.device,
    cfg: DictConfig,
    slice_axis: int,
    max_examples: int = 3,
    dist: Dist | None = None,
) -> Validation:
    """Volume Dice of the ensemble, the snow check and the validation MSE; see the module.

    ``dist`` (DDP): ``loader`` holds this rank's share of the volumes; the metrics are the
    whole set's, on every rank; the examples are this rank's."""
    dist = dist or Dist()
    tcfg, dcfg = cfg.training, cfg.diffusion
    net.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(int(dcfg.val_seed))
    predictor = WindowPredictor(
        net, mode, schedulers, dcfg, tcfg.amp, generator, bool(tcfg.val_skip_empty)
    )
    predictor.defer_divergence = dist.active
    ensemble = SegMetrics(2, tcfg.get("metrics"))
    before, after = SegMetrics(2), SegMetrics(2)
    rule = empty_label_rule(tcfg.get("metrics"))
    slice_dice = {"single": SliceDice(rule), "ensemble": SliceDice(rule)}
    examples = []
    windows_per_call = max(1, int(tcfg.val_batch_size) // int(dcfg.num_samples))
    for index, batch in enumerate(loader):
        generator.manual_seed(
            _volume_seed(int(dcfg.val_seed), batch, index * dist.world + dist.rank)
        )
        image, label = on_device(batch["image"], device), on_device(batch["label"], device)
        # (1, C + 1, X, Y, Z) -> one 2D item per slice across the slice axis
        slices = torch.cat([image, label.float()], dim=1)[0].movedim(slice_axis + 1, 0)
        maps = sliding_window_inference(
            slices, list(tcfg.patch_size), windows_per_call, predictor, float(tcfg.sw_overlap)
        )
        assert isinstance(maps, torch.Tensor)
        maps = maps.movedim(0, slice_axis + 1)[None]  # (1, 3, X, Y, Z)
        spacing = voxel_spacing(batch["image"])
        ensemble(_two_class(maps[:, 0:1]), label, spacing)
        before(_two_class(maps[:, 1:2]), label, None)
        after(_two_class(maps[:, 2:3]), label, None)
        slice_dice["ensemble"](maps[:, 0:1], label, slice_axis)
        slice_dice["single"](maps[:, 2:3], label, slice_axis)
        if len(examples) < max_examples:
            examples.append(_example(image, label, maps[:, 0:1], slice_axis))
    if dist.any(predictor.nonfinite is not None):
        raise Diverged(predictor.nonfinite or "validation samples became NaN/inf on another rank")
    dice, extra = ensemble.aggregate()  # MONAI's metrics gather across the ranks
    p = predictor
    single_3d = float(after.aggregate()[0].nanmean())
    metrics = {
        **{
            f"val_dice_2d_{k}": d.mean(dist.sum(d.total), dist.total(d.count))
            for k, d in slice_dice.items()
        },
        "val_dice_3d_single": single_3d,
        "val_dice_3d_ensemble": float(dice.nanmean()),
        **extra,
        "val_mse": dist.sum(p.mse_sum) / max(1, dist.total(p.mse_count)),
        "val_last_step_dice_before": float(before.aggregate()[0].nanmean()),
        "val_last_step_dice_after": single_3d,
        "val_last_step_changed": dist.total(p.changed) / max(1, dist.total(p.voxels)),
    }
    return Validation(dice, metrics, examples)


def _volume_seed(seed: int, batch: dict[str, Any], index: int) -> int:
    """The validation noise seed of one volume: from its case id (the same on any rank, in
    any shard), else its index in the validation set."""
    case = batch.get("case")
    key = str(case[0] if isinstance(case, (list, tuple)) else case) if case else str(index)
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode())]).generate_state(1)[0])


def _example(
    image: torch.Tensor, label: torch.Tensor, prob: torch.Tensor, axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slice with the most lesion (the middle one when there is none)."""
    area = label[0, 0].movedim(axis, 0).flatten(1).sum(dim=1)
    index = int(area.argmax()) if area.max() > 0 else label.shape[2 + axis] // 2

    def pick(x: torch.Tensor) -> np.ndarray:
        return x[0, 0].movedim(axis, 0)[index].float().cpu().numpy()

    return pick(image), pick(label), pick(prob)


def save_examples(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path) -> Path:
    """A PNG grid: one row per example, columns image / truth / ensemble mean."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a compute node
    import matplotlib.pyplot as plt

    rows = max(1, len(examples))
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, (img, truth, mean) in zip(axes, examples, strict=False):
        for ax, data, title, cmap in zip(
            row,
            (img, truth, mean),
            ("image (channel 0)", "truth", "ensemble mean"),
            ("gray", "magma", "magma"),
            strict=True,
        ):
            limits = {} if cmap == "gray" else {"vmin": 0.0, "vmax": 1.0}
            ax.imshow(data.T, cmap=cmap, origin="lower", **limits)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
