"""The samplers behind the recipes' loaders: which items a process reads, in which order.

* :class:`ResumableSampler` (training): the epoch's permutation, rank-strided in a DDP cell,
  after the indices an interrupted epoch already consumed.
* :class:`ShardSampler` (validation): a DDP rank's share of the validation volumes, in
  order; every volume on exactly one rank. MONAI's cumulative metrics (Dice, HD95, surface
  Dice) all-gather their buffers across the group when they aggregate, so each rank scores
  its own volumes and all of them read the whole set's means.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized

from torch.utils.data import Sampler

from recipes.components.data.seeding import EpochSampler, EpochSeeded

__all__ = ["ResumableSampler", "ShardSampler"]


class ResumableSampler(EpochSampler):
    """The epoch's permutation after its first ``skip`` indices: a batch is a run of
    consecutive indices, so skipping whole batches leaves the same remaining batches, and
    the skipped items are never loaded.

    Sharded (DDP), rank r takes every ``world``-th index of the same permutation from the
    r-th: step k's batches of all ranks are the run a single process with the global batch
    takes at step k. Padded with its own start (as DistributedSampler) so that every rank
    has as many batches; ``skip`` counts indices of this rank's shard.

    ``limit``: the epoch ends after this many indices of the shard (``training.steps_per_epoch``
    and ``max_steps`` cap an epoch); each epoch still draws its own permutation, so capped
    epochs see different items."""

    def __init__(self, source: EpochSeeded) -> None:
        super().__init__(source)
        self.skip = 0
        self.limit: int | None = None
        self.rank, self.world = 0, 1

    def _full_len(self) -> int:
        return -(-len(self.source) // self.world)  # ceil

    def _shard_len(self) -> int:
        full = self._full_len()
        return full if self.limit is None else min(full, self.limit)

    def __len__(self) -> int:
        return max(0, self._shard_len() - self.skip)

    def __iter__(self) -> Iterator[int]:
        order: Iterator[int] = super().__iter__()
        if self.world > 1:
            perm = list(order)
            perm += perm[: self._full_len() * self.world - len(perm)]
            order = iter(perm[self.rank :: self.world])
        return itertools.islice(order, self.skip, self._shard_len())


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``source``, unpadded (a volume scored twice
    would weigh twice in the mean); all of them until :meth:`shard` is called."""

    def __init__(self, source: Sized) -> None:
        self.source = source
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> bool:
        """Take rank ``rank``'s share, if every rank gets at least one item (a rank with
        none would not join the metrics' all-gather); False: every rank reads them all."""
        if len(self.source) < world:
            return False
        self.rank, self.world = rank, world
        return True

    def __len__(self) -> int:
        return len(range(self.rank, len(self.source), self.world))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.source), self.world))
