"""Training data order and augmentation as a pure function of (seed, epoch, case index).

Resuming a run must replay the epochs it missed exactly. Seeding the transforms once per
epoch in the main process is not enough as soon as the DataLoader has workers: each worker
holds its own copy of the transforms, seeded by MONAI's ``worker_init_fn`` from torch's
global RNG, and *persistent* workers keep that copy (and its advanced random state) across
epochs, so a resumed run, whose workers start afresh, would sample differently.

So the random state is set per item instead: before loading item ``i`` in epoch ``e`` the
dataset seeds its transforms with ``item_seed(seed, e, i)``, reading ``e`` from a tensor in
shared memory that the main process sets before each epoch (visible to forked, spawned and
persistent workers alike). The shuffle order comes from a sampler seeded by
``seed_for_epoch(seed, e)``. A batch's content then depends on neither ``num_workers``,
``persistent_workers``, worker scheduling nor how the run got to epoch ``e``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable
from torch.utils.data import Dataset, Sampler


def seed_for_epoch(seed: int, epoch: int) -> int:
    """Seed of the data in ``epoch``: independent of how the run got there."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def item_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the random transforms of item ``index`` in ``epoch`` (a uint32)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``: cheap enough for every item)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class EpochSeeded(Dataset):
    """Wraps a MONAI dataset whose random transforms are ``transform``; see the module doc.

    ``workers``: the loader's worker count; each worker records its peak resident memory in
    a shared-memory slot as it loads items (:meth:`worker_rss_gb`), which is what a worker
    holding a whole volume (or a cache copy) shows."""

    def __init__(self, dataset: Any, transform: Randomizable, seed: int, workers: int = 0) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        # Shared memory: a persistent worker reads the epoch the main process set last.
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.rss = torch.zeros(max(1, int(workers)), dtype=torch.float64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(int(epoch))

    def worker_rss_gb(self) -> list[float]:
        """Peak resident memory of each loader worker so far, GiB (0: it loaded nothing yet)."""
        return [float(v) / 2**30 for v in self.rss.tolist()]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.transform.set_random_state(seed=item_seed(self.seed, int(self.epoch), index))
        item = self.dataset[index]
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id < len(self.rss):
            self.rss[worker.id] = max(float(self.rss[worker.id]), float(resident_bytes()))
        return item


class EpochSampler(Sampler[int]):
    """A permutation per epoch, drawn from ``seed_for_epoch`` rather than torch's global RNG
    (which persistent workers would otherwise consume differently after a resume)."""

    def __init__(self, source: EpochSeeded) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(seed_for_epoch(self.source.seed, int(self.source.epoch)))
        return iter(torch.randperm(len(self.source), generator=generator).tolist())
