"""Data-parallel training (DDP) across the processes of one cell.

The runner starts a DDP cell as N tasks (``executor.gpus_per_cell: N``) and exports
torch.distributed's ``env://`` variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``,
``LOCAL_RANK``); standalone, ``torchrun`` sets the same ones. Without them (or with
``WORLD_SIZE=1``) :func:`init_distributed` returns a :class:`Dist` of one process whose
collectives are identities, so the recipe reads the same either way.

How the recipe splits the work (``recipes/segmentation/train.py``):

* ``training.batch_size`` is per process: the global batch is ``batch_size × world size``.
* Each rank takes every ``world``-th index of the epoch's permutation (the same permutation
  on every rank, from (seed, epoch)), so one step's global batch is the same run of
  consecutive indices a single process with the global batch would take; augmentation and
  patch crops follow (seed, epoch, case), so they are the same too. A resumed epoch skips
  ``batches_done`` batches of each rank's shard (``data/loaders.py``).
* The model is wrapped in ``DistributedDataParallel`` for the forward/backward only;
  checkpoints and validation use the bare module (no ``module.`` prefix in ``last.pt``).
* Rank 0 alone logs to MLflow and writes checkpoints.
* Validation is sharded: rank r scores volumes r, r + N, ... (``data/samplers.py``).
  MONAI's cumulative metrics (Dice, HD95, surface Dice) all-gather their buffers when they
  aggregate; ``val_loss`` and the instance metrics are reduced here (:meth:`Dist.sum`,
  :meth:`Dist.gather`), so every rank reads the numbers one process computes over the
  whole set. With fewer volumes than ranks every rank scores them all (the same means).
  Rank 0's metrics and decisions (early stop, prune) are then broadcast, so every rank
  takes the same branch.
* Gradient accumulation all-reduces only on the micro-batch that steps the optimizer
  (DDP's ``no_sync`` on the others: ``training/loop.py``).
* The train loss is the mean over ranks; a non-finite loss on any rank, or a stop request
  on any rank, is agreed on at each step (one small all-reduce), so all ranks stop at the
  same step and rank 0's step checkpoint is everyone's.

Backends: gloo on CPU, NCCL on CUDA. ``training.ddp_timeout_min`` bounds every collective:
a rank that hangs fails the others after it rather than never.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as td
from torch import nn

__all__ = ["Dist", "PeerLost", "init_distributed"]

# How a collective fails when a peer has gone (gloo: the socket closes; NCCL: the watchdog or
# the store) or hangs past ``training.ddp_timeout_min``.
_PEER_SIGNS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "store")


class PeerLost(RuntimeError):
    """A collective failed because another rank of the cell exited, was killed or hangs."""


@dataclass
class Dist:
    """This process's place in the cell's group; a group of one when not distributed."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train with: DDP around ``model`` when distributed, else ``model``."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks."""
        return self.sum(value) / self.world if self.active else value

    def sum(self, value: float) -> float:
        """``value`` summed over the ranks."""
        return float(self._reduce(value, torch.float64, td.ReduceOp.SUM))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world
        td.all_gather_object(out, value)
        return out

    def total(self, value: int) -> int:
        """``value`` summed over the ranks."""
        return int(self._reduce(value, torch.int64, td.ReduceOp.SUM))

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one of them."""
        return bool(self._reduce(int(bool(flag)), torch.int32, td.ReduceOp.MAX))

    def _reduce(self, value: float, dtype: torch.dtype, op: Any) -> float:
        """One number all-reduced with ``op`` (itself when not distributed)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=dtype, device=self.device)
        td.all_reduce(t, op=op)
        return t.item()

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable values: metrics, decisions)."""
        if not self.active:
            return value
        box = [value]
        td.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    @contextlib.contextmanager
    def peers_guarded(self) -> Iterator[None]:
        """Turns a collective's low-level failure into :class:`PeerLost`, which says what
        happened (a rank died: the OOM killer, a node failure, its own exception) and where
        to look, instead of a transport error."""
        try:
            yield
        except PeerLost:
            raise
        except RuntimeError as err:
            text = str(err)
            if not self.active or not any(s in text.lower() for s in _PEER_SIGNS):
                raise
            raise PeerLost(
                f"rank {self.rank} of {self.world} lost its DDP group: another rank exited, "
                "was killed or hangs (its task log says why; resume continues from last.pt): "
                + text.splitlines()[0][:300]
            ) from err

    def close(self) -> None:
        """Leave the group this process formed (a no-op otherwise)."""
        if self._owns_group and td.is_initialized():
            if td.get_backend() == "gloo":
                # Leave together: rank 0 hosts the group's store, and a rank still talking
                # to it when rank 0 has exited can die at its own exit. Bounded (a peer that
                # failed never arrives), and without effect on the outcome.
                with contextlib.suppress(RuntimeError):
                    td.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            td.destroy_process_group()
        self._owns_group = False


def init_distributed(device: torch.device, timeout_min: float = 30.0) -> Dist:
    """Join the cell's group from the ``env://`` variables; a group of one without them.

    ``device``: the one the config resolved to. With several GPUs visible to this process,
    rank r takes ``cuda:LOCAL_RANK``; the runner usually leaves one visible per rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist(device=device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        count = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        device = torch.device("cuda", local % count if count > 1 else 0)
        torch.cuda.set_device(device)
    owns = not td.is_initialized()
    if owns:
        td.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=float(timeout_min)),
        )
    return Dist(rank=rank, world=world, device=device, _owns_group=owns)
