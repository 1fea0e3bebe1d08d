"""Learning-rate range test before training (``training.find_lr``), with MONAI's finder.

MONAI's LearningRateFinder raises the lr exponentially over ``num_iter`` batches, records the
smoothed loss, and restores the model and optimizer afterwards (auto_reset), so training
starts from the same weights. The suggested lr is the one at the steepest loss descent. It replaces
``optimizer.lr`` in every param group, scaled so that layer-wise ratios are kept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: only ever written to a file

import matplotlib.pyplot as plt
import torch
from monai.data import MetaTensor
from monai.optimizers import LearningRateFinder
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.training.mlflow_logging import RunLogger


def _plain_image(batch: dict) -> torch.Tensor:
    x = batch["image"]
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def _plain_label(batch: dict) -> torch.Tensor:
    x = batch["label"]
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def find_lr(
    model: nn.Module,
    optimizer: Optimizer,
    loss_fn: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    finder_cfg: DictConfig,
    plot_path: Path,
) -> float | None:
    """Run the range test, set the suggested lr on ``optimizer``, save the plot; return it.

    None (lr unchanged) when the test found no descent, e.g. too few iterations.
    """
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    finder = LearningRateFinder(model, optimizer, loss_fn, device=device, verbose=False)
    finder.range_test(
        loader,
        image_extractor=_plain_image,
        label_extractor=_plain_label,
        start_lr=float(finder_cfg.start_lr),
        end_lr=float(finder_cfg.end_lr),
        num_iter=int(finder_cfg.num_iter),
    )
    lr, _ = finder.get_steepest_gradient()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    finder.plot(ax=ax, steepest_lr=lr is not None)
    ax.set_title(f"LR range test: suggested lr {lr:.3g}" if lr else "LR range test")
    fig.tight_layout()
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot_path)
    plt.close(fig)
    if lr is None or not math.isfinite(lr):
        return None
    # The finder worked on param group 0's lr; keep the other groups' ratios to it.
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = lr * base / base_lrs[0]
        if "initial_lr" in group:
            group["initial_lr"] = group["lr"]
    return float(lr)


def find_lr_and_log(
    model: nn.Module,
    optimizer: Optimizer,
    loss_fn: nn.Module,
    loader: Any,
    device: torch.device,
    cfg: DictConfig,
    logger: RunLogger,
    out_dir: Path,
) -> None:
    """:func:`find_lr`, then the chosen lr as a param and a metric and the plot as an
    artifact (``lr_finder/``); no descent found: a tag says the configured lr is kept."""
    plot = out_dir / "lr_finder.png"
    lr = find_lr(model, optimizer, loss_fn, loader, device, cfg.training.lr_finder, plot)
    logger.client.log_artifact(logger.run_id, str(plot), "lr_finder")
    if lr is not None:
        logger.log_params({"lr_finder.lr": f"{lr:.6g}"})
        logger.log_metrics({"lr_finder_lr": lr}, step=0)
    else:
        logger.set_tag("lr_finder", f"no descent found; keeping lr {cfg.optimizer.lr}")
