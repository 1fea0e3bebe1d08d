"""Whole-volume validation (and test-mode evaluation) for both tasks of the recipe.

``task.name: semantic`` scores per-class Dice (HD95 / surface Dice on request) of the
argmax; ``em_instance`` decodes instances by seeded watershed and scores adapted Rand
error, variation of information and foreground Dice (``instances.py``). Both report the
validation loss, ``val_loss``, when given the loss: the same loss as in training, on whole
volumes, so ReduceLROnPlateau and early stopping can watch it. A dataset mask restricts
loss and metrics alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from omegaconf import DictConfig
from torch import nn

from recipes.components.training import em_scores
from recipes.components.training.case_metrics import METRIC_RULES
from recipes.components.training.distributed import Dist
from recipes.components.training.instances import InstanceMetrics
from recipes.components.training.metrics import SegMetrics, voxel_spacing
from recipes.components.training.step import autocast, on_device

TASKS = ("semantic", "em_instance")
EM_HEADS = 3


def task_of(cfg: DictConfig) -> str:
    """``cfg.task.name``; configs from before the task group are semantic."""
    name = (cfg.get("task") or {}).get("name", "semantic")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return str(name)


def em_metrics(cfg: DictConfig) -> str:
    """The EM metrics' convention, ``task.em_metrics`` (``em_scores.py``; default cremi)."""
    return str((cfg.get("task") or {}).get("em_metrics", em_scores.DEFAULT))


def metric_rules(cfg: DictConfig) -> str:
    """How this run's metrics are defined: the param ``metric_rules`` (README: metrics)."""
    if task_of(cfg) == "em_instance":
        return f"{METRIC_RULES}; {em_scores.RULES[em_scores.check_convention(em_metrics(cfg))]}"
    return METRIC_RULES


def check_task(cfg: DictConfig) -> str:
    """The task, after checking that model, loss and data fit it (clear errors up front)."""
    task, loss = task_of(cfg), cfg.loss.get("name")
    if task == "em_instance":
        problems = []
        if loss != "em_instance":
            problems.append(f"loss={loss} (pick loss=em_instance, the three-head loss)")
        if cfg.model.get("out_channels") != EM_HEADS:
            problems.append(f"model.out_channels={cfg.model.get('out_channels')} (needs 3)")
        if cfg.data.num_classes != 2:
            problems.append(f"data.num_classes={cfg.data.num_classes} (background + one class)")
        if problems:
            raise ValueError("task=em_instance does not fit " + "; ".join(problems))
        em_scores.check_convention(em_metrics(cfg))
    elif loss == "em_instance":
        raise ValueError("loss=em_instance is the loss of task=em_instance; pick that task")
    return task


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    cfg: DictConfig,
    inferer: Inferer,
    loss_fn: nn.Module | None = None,
    on_case: Callable[[dict[str, Any], torch.Tensor, np.ndarray | None], None] | None = None,
    dist: Dist | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(per-foreground-class Dice, other metrics) over the volumes of ``loader``.

    ``on_case(batch, logits, instances)`` sees each volume's prediction (test mode saves it).
    ``dist`` (DDP): each rank's ``loader`` holds its share of the volumes; the metrics are
    those of all of them, on every rank (``training/distributed.py``).
    """
    model.eval()
    em = task_of(cfg) == "em_instance"
    metrics: InstanceMetrics | SegMetrics
    if em:
        metrics = InstanceMetrics(cfg.task.get("watershed"), em_metrics(cfg))
    else:
        metrics = SegMetrics(cfg.data.num_classes, cfg.training.get("metrics"))
    losses: list[float] = []
    for batch in loader:
        image, label = on_device(batch["image"], device), on_device(batch["label"], device)
        mask = on_device(batch["mask"], device) if "mask" in batch else None
        with autocast(device, cfg.training.amp):
            logits = inferer(image, model)
        logits = logits.float()  # type: ignore[union-attr]
        if loss_fn is not None:
            target = on_device(batch["target"], device) if em else label
            value = loss_fn(logits, target) if mask is None else loss_fn(logits, target, mask)
            losses.append(float(value))
        instances = None
        if isinstance(metrics, InstanceMetrics):
            instances = metrics(logits, label, mask)
        else:
            metrics(logits, label, voxel_spacing(batch["image"]), mask)
        if on_case is not None:
            on_case(batch, logits, instances)
    if dist is not None and dist.active:
        if isinstance(metrics, InstanceMetrics):  # MONAI's metrics gather themselves
            metrics.scores = [s for scores in dist.gather(metrics.scores) for s in scores]
        count = dist.total(len(losses))
        mean_loss = dist.sum(sum(losses)) / count if count else None
    else:
        mean_loss = float(np.mean(losses)) if losses else None
    dice, extra = metrics.aggregate()
    if mean_loss is not None:
        extra["val_loss"] = mean_loss
    return dice, extra


def save_instances(
    out_dir: Path,
) -> Callable[[dict[str, Any], torch.Tensor, np.ndarray | None], None]:
    """An ``on_case`` that writes each case's prediction to ``out_dir/{case}_pred.h5``
    (dataset ``main``, ``(z, y, x)`` as EM stacks are stored): the instances of
    ``em_instance``, else the argmax labels."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(batch: dict[str, Any], logits: torch.Tensor, instances: np.ndarray | None) -> None:
        import h5py

        pred = instances if instances is not None else logits[0].argmax(0).cpu().numpy()
        case = batch["case"][0] if "case" in batch else f"case{len(list(out_dir.iterdir()))}"
        zyx = np.ascontiguousarray(np.transpose(pred.astype(np.int32), (2, 1, 0)))
        with h5py.File(out_dir / f"{case}_pred.h5", "w") as handle:
            handle.create_dataset("main", data=zyx, compression="gzip")

    return write
