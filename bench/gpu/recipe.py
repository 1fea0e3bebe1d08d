"""The recipe's own pieces, put together for one measured configuration.

The config is composed by Hydra from the recipe's ``conf/`` with overrides, as a cell's is
(Hydra's ``compose`` directly, not ``runner.recipe``: the check needs hydra-core, omegaconf
and antlr4 only, three small pure-Python wheels). The network comes from
``models/build.py`` (DynUNet planned as nnU-Net plans it, MedNeXt-B through
``create_mednext``), gradient checkpointing from ``grad_checkpointing.py``, the loss,
optimizer and schedule from their builders, and every step is ``train_one_epoch`` of
``training/loop.py`` (autocast by name, fp32 loss, finiteness check, backward, optimizer
and schedule step, ``loss.item()``), fed one synthetic batch already on the device, so that
a step's figure is the step's alone; part 5 measures the data loading.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bench.gpu.harness import Deadline, free_memory

GIB = 2**30


def compose(recipe: str, overrides: Sequence[str]) -> DictConfig:
    """``recipe``'s config (``segmentation`` or ``diffusion``) with ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if recipe == "segmentation":
        from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
    else:
        from recipes.diffusion import CONFIG_DIR, CONFIG_NAME
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(CONFIG_NAME, list(overrides))


def seg_config(
    model: str, side: int, amp: str, tiny: bool, extra: Sequence[str] = ()
) -> DictConfig:
    """The segmentation recipe's cell for ``model`` at a ``side``³ patch."""
    overrides = [
        f"model={model}",
        f"training.patch_size=[{side},{side},{side}]",
        f"training.amp={amp}",
        "training.device=auto",
        *(["model.size=tiny"] if tiny else []),  # published sizes are GPU work
        *extra,
    ]
    return compose("segmentation", overrides)


def device() -> torch.device:
    from recipes.components.training.setup import resolve_device

    return resolve_device("auto")


@contextlib.contextmanager
def recipe_kernels(dev: torch.device, amp: str) -> Iterator[None]:
    """Set up kernels as the recipe does for ``amp`` (CPU BF16: oneDNN off, for its backward
    kernels' NaNs), and put them back after, so that the next configuration starts clean."""
    from recipes.components.training.setup import avoid_onednn_bf16_backward

    before = torch.backends.mkldnn.enabled
    avoid_onednn_bf16_backward(dev, amp)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def build_trainee(
    cfg: DictConfig,
    dev: torch.device,
    grad_checkpointing: bool = False,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    group: Any = None,
    model: nn.Module | None = None,
) -> Any:
    """A ``Trainee`` as ``recipes/segmentation/train.py`` builds it; ``model`` instead of
    building one from ``cfg.model``; ``wrap``: DDP (``Dist.wrap``)."""
    from recipes.components.models.build import apply_grad_checkpointing, build_model
    from recipes.components.training.loop import Trainee
    from recipes.components.training.losses import build_loss
    from recipes.components.training.optim import build_optimizer, build_scheduler

    net = model if model is not None else build_model(cfg.model).to(dev)
    if grad_checkpointing:
        apply_grad_checkpointing(net)
    loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(dev)
    opt = optimizer(net) if optimizer else build_optimizer(cfg.optimizer, net, cfg.model.name)
    schedule = build_scheduler(cfg.scheduler, opt, 1, 100_000)  # never runs out
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.training.amp == "fp16")
    trained = wrap(net) if wrap else net
    return Trainee(trained, loss_fn, opt, schedule, scaler, dev, cfg.training, group)


def synthetic_batch(cfg: DictConfig, batch: int, dev: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` patches of the config's size on ``dev``: Gaussian images and labels that
    follow the first channel (class = its quantile bin), so that every class is present."""
    gen = torch.Generator().manual_seed(0)
    patch = [int(s) for s in cfg.training.patch_size]
    image = torch.randn(batch, int(cfg.data.in_channels), *patch, generator=gen)
    classes = int(cfg.data.num_classes)
    edges = torch.linspace(-1.0, 1.0, classes - 1) if classes > 2 else torch.tensor([1.0])
    label = torch.bucketize(image[:, :1], edges).float()
    return {"image": image.to(dev), "label": label.to(dev)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class StepFigures:
    """One configuration's training steps: median step time and peak memory (CUDA only:
    ``max_memory_allocated`` after a reset, less what was allocated before the model)."""

    step_s: float
    peak_gib: float | None
    steps: int
    loss: float
    times_s: list[float]
    saved_gib: float  # what autograd kept for backward in the first warm-up step

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def one_step(trainee: Any, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(seconds, loss) of one step through the recipe's epoch function."""
    from recipes.components.training.checkpoint import Progress
    from recipes.components.training.loop import train_one_epoch

    sync()
    start = time.perf_counter()
    loss, _, _ = train_one_epoch(trainee, [batch], 1, Progress())
    sync()
    return time.perf_counter() - start, float(loss)


def measure(
    build: Callable[[], tuple[Any, dict[str, torch.Tensor]]],
    warmup: int,
    steps: int,
    deadline: Deadline,
    what: str,
) -> StepFigures:
    """Build (model, optimizer, batch), run ``warmup`` steps (the first one counting the
    bytes autograd saves: deterministic, unlike any allocator figure), project the timed
    ones from the last warm-up step (skip with the projection when they would overrun),
    time them."""
    from recipes.components.models.grad_checkpointing import saved_tensor_bytes

    free_memory()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    trainee, batch = build()
    first: list[tuple[float, float]] = []
    saved = saved_tensor_bytes(lambda: first.append(one_step(trainee, batch)), trainee.model)
    last, loss = first[0]
    for _ in range(warmup - 1):  # allocator, cuDNN heuristics, lazy init
        last, loss = one_step(trainee, batch)
    deadline.check(last * steps, f"{what}: {steps} timed steps")
    times = []
    for _ in range(steps):
        seconds, loss = one_step(trainee, batch)
        times.append(seconds)
    peak = (torch.cuda.max_memory_allocated() - base) / GIB if cuda else None
    return StepFigures(statistics.median(times), peak, steps, loss, times, saved / GIB)
