"""The recipe's default cell, built once and shared by the training benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from omegaconf import DictConfig

from bench.common import recipe_overrides


@dataclass
class Workbench:
    cfg: DictConfig
    device: torch.device
    amp: str
    data: Any  # recipes.components.data.loaders.DataBundle
    batches: list[dict[str, Any]]  # one epoch from the recipe's loader, as it yields them

    @property
    def patches_per_step(self) -> int:
        return int(self.batches[0]["image"].shape[0])


@lru_cache(maxsize=2)
def workbench(quick: bool, smoke: bool = False) -> Workbench:
    from recipes.components.data.loaders import build_data
    from recipes.components.training.setup import resolve_device, seed_everything
    from runner.recipe import Recipe

    cfg = Recipe.load("segmentation").compose(recipe_overrides(quick, smoke))
    seed_everything(cfg.seed, deterministic=False)
    data = build_data(cfg.data, cfg.training, cfg.seed)
    batches = list(data.train_loader)
    return Workbench(cfg, resolve_device(cfg.training.device), cfg.training.amp, data, batches)


def loader_batches(wb: Workbench, n: int) -> list[dict[str, Any]]:
    """``n`` batches exactly as the recipe's DataLoader yields them (MetaTensors)."""
    return [wb.batches[i % len(wb.batches)] for i in range(n)]
