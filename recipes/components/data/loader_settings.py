"""The DataLoader settings of ``training`` and ``data``, checked: workers, prefetch,
persistence, pinned memory, the workers' multiprocessing context, and how much to cache."""

from __future__ import annotations

from typing import Any

from monai.data import CacheDataset, Dataset
from monai.transforms import Compose
from omegaconf import DictConfig

#: ``training.multiprocessing_context``: how workers start. null: torch's default (fork on
#: Linux); spawn: a fresh interpreter per worker that receives the dataset pickled (chunked
#: volumes travel as paths, so a spawned worker holds no copy of a volume).
CONTEXTS = ("fork", "spawn", "forkserver")


def cache_rate(data_cfg: DictConfig) -> float:
    """``data.cache_rate`` in [0, 1]; the older boolean ``data.cache`` still means 1 or 0."""
    rate, legacy = data_cfg.get("cache_rate"), data_cfg.get("cache")
    if rate is not None and legacy is not None:
        raise ValueError("set data.cache_rate (0..1) or the older data.cache (bool), not both")
    if rate is None:
        return 1.0 if legacy is None or legacy else 0.0
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"data.cache_rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def loader_kwargs(train_cfg: DictConfig) -> dict[str, Any]:
    """DataLoader arguments from ``training``; worker-only ones only when there are workers,
    so that e.g. an axis over num_workers may include 0 with persistent_workers in base."""
    workers = train_cfg.get("num_workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"training.num_workers must be an integer >= 0, got {workers!r}")
    flags = {}
    for key in ("persistent_workers", "pin_memory"):
        value = train_cfg.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"training.{key} must be true or false, got {value!r}")
        flags[key] = value
    prefetch = train_cfg.get("prefetch_factor")
    if prefetch is not None and (
        isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1
    ):
        raise ValueError(
            f"training.prefetch_factor must be an integer >= 1 or null, got {prefetch!r}"
        )
    context = train_cfg.get("multiprocessing_context")
    if context is not None and context not in CONTEXTS:
        raise ValueError(
            f"training.multiprocessing_context must be null or one of {', '.join(CONTEXTS)}, "
            f"got {context!r}"
        )
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": flags["pin_memory"]}
    if workers > 0:
        kwargs["persistent_workers"] = flags["persistent_workers"]
        if prefetch is not None:
            kwargs["prefetch_factor"] = prefetch
        if context is not None:
            kwargs["multiprocessing_context"] = context
    return kwargs


def volume_dataset(items: list[dict[str, Any]], transform: Compose, rate: float) -> Dataset:
    """``items`` through ``transform``; with ``rate`` > 0 MONAI's CacheDataset keeps that
    share of them up to the first random transform, i.e. loaded, normalised volumes."""
    if rate > 0:
        return CacheDataset(items, transform, cache_rate=rate, num_workers=1, progress=False)
    return Dataset(items, transform)
