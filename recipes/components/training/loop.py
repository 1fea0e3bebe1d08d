"""One training epoch that can stop after any optimizer step and be continued exactly.

``train_one_epoch`` runs the step logic (autocast, fp32 loss, gradient accumulation and
clipping, fp16 scaling, per-step schedules). After each optimizer step inside the epoch it
hands an :class:`EpochState` (batches consumed and running sums) to an ``after_step`` hook.
:class:`StepCheckpoints` is that hook in the recipes: it writes ``last.pt`` with the state as
``in_epoch`` every ``training.checkpoint_every_steps`` steps (a crash loses at most that
many), and when ``RunContext.stop`` is set (SLURM's time-limit warning, a preemption) it
writes one and raises :class:`Interrupted`.

Why a resumed epoch is the same epoch: its batches come from a per-epoch permutation and
per-item augmentation seeds (``data/seeding.py``), so skipping the consumed batches in the
sampler (``DataBundle.set_epoch(epoch, batches)``) yields exactly the remaining ones without
loading the skipped ones; the train loader draws its worker seeds from its own generator,
not torch's global RNG, so the RNG states saved at the step are the ones the next step sees;
model, optimizer, scheduler and scaler states are in the checkpoint. Only optimizer-step
boundaries are checkpointed: a half-accumulated gradient is not saved.

Accumulation: the epoch's batches form groups of ``accumulate_steps`` (the last one may be
shorter); each batch's loss is divided by its group's length, so that every optimizer step
follows the mean loss of its group whatever the group's length, and ``train_loss`` is the
mean over optimizer steps of those group losses. A run whose micro-batch was halved and
whose accumulation was doubled (``runner``'s ``halve_batch`` remedy for an out-of-memory
cell) thus takes the same steps and logs the same ``train_loss`` as before, up to float
rounding and batch-dependent layers (BatchNorm); a step checkpoint written at the other
batch size continues at the same item of the epoch (:func:`rebatched`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from recipes.components.training.checkpoint import Progress
from recipes.components.training.distributed import Dist
from recipes.components.training.optim import Schedule
from recipes.components.training.step import Diverged, LoaderClock, as_float, autocast, on_device
from recipes.components.training.step_metrics import StepMetrics, grad_norm
from recipes.contract import StopRequest

__all__ = [
    "EpochState",
    "Interrupted",
    "StepCheckpoints",
    "Trainee",
    "checkpoint_every_steps",
    "rebatched",
    "requested_stop_reason",
    "train_one_epoch",
]


@dataclass
class Trainee:
    """What one optimisation step touches: the model and everything that updates it."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    device: torch.device
    tcfg: DictConfig
    #: DDP: the cell's group, whose ranks agree on a non-finite loss at every step (one
    #: rank's stops all of them at the same step); None: one process.
    group: Dist | None = None
    #: Gradient norm, clipping and each group's lr, step by step (``step_metrics.py``);
    #: None: not recorded (the norm is then computed only to clip).
    watch: StepMetrics | None = None


@dataclass
class EpochState:
    """Where an epoch in progress stands; plain numbers, so a checkpoint holds it as is."""

    epoch: int
    batches: int = 0  # batches consumed, always an optimizer-step boundary
    total_loss: float = 0.0  # sum of the optimizer steps' losses so far: the mean stays exact
    patches: int = 0
    lr: float = 0.0
    seconds: float = 0.0  # training time so far, earlier attempts included
    wait_s: float = 0.0  # of which waiting for the loader
    batch_size: int = 0  # items per batch ``batches`` counts in (0: not recorded)
    grad_steps: int = 0  # optimizer steps so far, with the gradient figures below
    grad_norm_sum: float = 0.0  # of the finite norms before clipping
    grad_norm_max: float = 0.0
    grad_clipped: int = 0  # steps whose norm exceeded training.grad_clip_norm

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def rebatched(state: EpochState, batch_size: int) -> EpochState:
    """``state`` counted in batches of ``batch_size`` items: a step checkpoint written with
    another batch size (an out-of-memory remedy halved it) continues at the same item of the
    epoch, so that the sampler skips exactly the items already trained on."""
    old = state.batch_size or batch_size
    items = state.batches * old
    if items % batch_size:
        raise ValueError(
            f"the step checkpoint stopped after {items} items of epoch {state.epoch} "
            f"(batches of {old}); batches of {batch_size} cannot continue from there"
        )
    return dataclasses.replace(state, batches=items // batch_size, batch_size=batch_size)


class Interrupted(Exception):
    """A stop was requested: the step checkpoint is written; ``reason`` says who asked."""

    def __init__(self, reason: str, state: EpochState) -> None:
        super().__init__(f"stopped at epoch {state.epoch} batch {state.batches}: {reason}")
        self.reason, self.state = reason, state


def requested_stop_reason(stop_request: StopRequest | None) -> str:
    """Why the ranks agreed to stop: this rank's request's reason; a rank that saw no request
    itself stops because a peer did (one all-reduce tells every rank that one asked)."""
    return (stop_request.reason if stop_request else None) or "stop requested on another rank"


def checkpoint_every_steps(tcfg: DictConfig) -> int | None:
    """``training.checkpoint_every_steps``: null (epoch ends only) or an integer >= 1."""
    every = tcfg.get("checkpoint_every_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(
            "training.checkpoint_every_steps must be an integer >= 1 (optimizer steps between "
            f"step checkpoints) or null (at epoch ends only), got {every!r}"
        )
    return every


class StepCheckpoints:
    """The ``after_step`` hook: a step checkpoint every ``every`` optimizer steps, and on a
    stop request one more, then :class:`Interrupted`.

    ``save`` writes ``last.pt`` from ``progress`` (whose ``in_epoch`` is set around the
    call); ``clock`` and ``started``/``offset_s`` give the epoch's time so far. ``group``
    (DDP): the ranks agree on the stop flag at every step, so that they all stop at the same
    step (a signal reaches them at slightly different times), and the saved running sums are
    the ranks' mean, from which every rank resumes: the epoch's mean over ranks stays exact.
    """

    def __init__(
        self,
        save: Callable[[], None],
        progress: Progress,
        every: int | None,
        stop_request: StopRequest | None,
        clock: LoaderClock,
        offset_s: float = 0.0,
        group: Dist | None = None,
    ) -> None:
        self.save, self.progress, self.every = save, progress, every
        self.stop_request = stop_request
        self.clock, self.offset_s, self.started = clock, offset_s, time.perf_counter()
        self.group = group

    def __call__(self, state: EpochState) -> None:
        stopping = self.stop_request is not None and bool(self.stop_request)
        if self.group is not None:
            stopping = self.group.any(stopping)
        if not stopping and not (self.every and self.progress.global_step % self.every == 0):
            return
        state.seconds = self.offset_s + time.perf_counter() - self.started
        state.wait_s = self.clock.wait_s
        saved = state
        if self.group is not None:  # every rank calls this at the same step
            mean = self.group.mean
            saved = dataclasses.replace(
                state, total_loss=mean(state.total_loss), patches=round(mean(state.patches))
            )
        self.progress.in_epoch = saved.as_dict()
        try:
            self.save()
        finally:
            self.progress.in_epoch = None  # an epoch-end checkpoint never carries it
        if stopping:
            raise Interrupted(requested_stop_reason(self.stop_request), state)


def _no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` when ``skip`` (a micro-batch that does not step), else nothing."""
    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def train_one_epoch(
    t: Trainee,
    loader: Any,
    epoch: int,
    progress: Progress,
    state: EpochState | None = None,
    after_step: Callable[[EpochState], None] | None = None,
) -> tuple[float, int, float]:
    """One pass over the training patches; returns (mean loss, patches seen, last lr).

    ``state``: the epoch was started by an earlier attempt; ``loader`` yields the batches
    after ``state.batches`` only. ``after_step``: called after each optimizer step but the
    epoch's last, with the state so far (it may raise :class:`Interrupted`).
    """
    t.model.train()
    accumulate = max(1, int(t.tcfg.get("accumulate_steps", 1)))
    clip = t.tcfg.get("grad_clip_norm")
    watch = t.watch
    base_lr = watch.base_lr if watch is not None else lambda o: o.param_groups[0]["lr"]
    if state is None:
        state = EpochState(epoch, lr=base_lr(t.optimizer))
    state.batch_size = int(t.tcfg.get("batch_size") or 0)
    if watch is not None:
        watch.begin(state)
    total = state.batches + len(loader)
    group_loss = 0.0  # the current optimizer step's loss: the mean over its batches
    t.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader, start=state.batches + 1):
        image = on_device(batch["image"], t.device)
        # em_instance trains on the derived target maps; a mask restricts the loss.
        label = on_device(batch["target" if "target" in batch else "label"], t.device)
        mask = on_device(batch["mask"], t.device) if "mask" in batch else None
        if hasattr(t.loss_fn, "inner") and hasattr(t.loss_fn.inner, "set_step"):
            t.loss_fn.inner.set_step(progress.global_step)  # per-term loss warm-up
        stepping = step % accumulate == 0 or step == total
        # This batch's group: `accumulate` batches, or fewer at the end of the epoch.
        in_group = min(accumulate, total - (step - 1) // accumulate * accumulate)
        # DDP: gradients are all-reduced on the micro-batch that steps the optimizer only;
        # the others accumulate locally (the sum is the same, the traffic 1/accumulate).
        with _no_sync(t.model, not stepping):
            with autocast(t.device, t.tcfg.amp):
                logits = t.model(image)
            # The loss in fp32 for stable reductions.
            args = (as_float(logits), label) if mask is None else (as_float(logits), label, mask)
            loss = t.loss_fn(*args)
            bad = not torch.isfinite(loss)
            if t.group is not None and t.group.any(bad) and not bad:
                raise Diverged(f"a non-finite loss on another rank at epoch {epoch} step {step}")
            if bad:
                # Before the optimizer step: last.pt keeps the last good weights.
                raise Diverged(f"loss became {loss.item()} at epoch {epoch} step {step}")
            t.scaler.scale(loss / in_group).backward()
        group_loss += loss.item() / in_group
        state.patches += image.shape[0]
        if not stepping:
            continue
        state.total_loss, group_loss = state.total_loss + group_loss, 0.0
        if clip or watch is not None:
            # The norm (and the threshold) in the loss's units, not the fp16 scaler's.
            t.scaler.unscale_(t.optimizer)
            norm = grad_norm(t.model.parameters(), clip)
            if watch is not None:
                watch.record(progress.global_step + 1, norm, t.optimizer)
        state.lr = base_lr(t.optimizer)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.optimizer.zero_grad(set_to_none=True)
        if t.schedule.interval == "step":
            t.schedule.scheduler.step()
        progress.global_step += 1
        state.batches = step
        if after_step is not None and step != total:
            after_step(state)
    steps = -(-total // accumulate)  # optimizer steps in the epoch
    return state.total_loss / max(1, steps), state.patches, state.lr
