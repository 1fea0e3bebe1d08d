"""Config composition and the building blocks of the segmentation recipe, on real networks."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from monai.networks.blocks.activation_checkpointing import ActivationCheckpointWrapper
from omegaconf import DictConfig, OmegaConf

from recipes.components.models.build import (
    apply_grad_checkpointing,
    build_model,
    load_plain_state_dict,
    plain_state_dict,
)
from recipes.components.training.checkpoint import (
    Progress,
    atomic_save,
    load_checkpoint,
    save_checkpoint,
)
from recipes.components.training.losses import build_loss
from recipes.components.training.mlflow_logging import flatten_config
from recipes.components.training.optim import build_optimizer, build_scheduler
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME

GROUPS = ("model", "optimizer", "scheduler", "loss", "data", "training")
CHOICES = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):  # published sizes: GPU work
        return compose(CONFIG_NAME, overrides=["model.size=tiny", *overrides])


@pytest.mark.parametrize(("group", "choice"), CHOICES)
def test_every_choice_composes_and_resolves(group: str, choice: str) -> None:
    cfg = _compose([f"{group}={choice}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    assert group == "training" or cfg[group].name == choice
    assert isinstance(cfg.optimizer.lr, float)
    assert cfg.model.in_channels == cfg.data.in_channels
    assert cfg.training.amp in ("bf16", "fp32")


def test_isles24_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISLES24_ROOT", "/data/isles24")
    cfg = _compose(["data=isles24"])
    assert cfg.data.root == "/data/isles24" and cfg.model.in_channels == 4


@pytest.mark.parametrize("name", ["segresnet", "unet", "basic_unet"])
def test_grad_checkpointing_wraps_blocks_and_keeps_loss_and_grads(name: str) -> None:
    cfg = _compose([f"model={name}"])
    torch.manual_seed(0)
    plain = build_model(cfg.model)
    wrapped = copy.deepcopy(plain)
    assert apply_grad_checkpointing(wrapped) > 0
    wrappers = [m for m in wrapped.modules() if isinstance(m, ActivationCheckpointWrapper)]
    assert wrappers

    # A wrapped block starts again during backward: that is the recomputation. (A pre-hook:
    # torch stops recomputing once it has the tensors it needs, maybe before the block ends.)
    calls = {"n": 0}
    inner = wrappers[0].module
    handle = inner.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    side = 32 if name == "basic_unet" else 16  # BasicUNet pools 4 times
    x = torch.randn(1, 2, side, side, side)
    label = (torch.rand(1, 1, side, side, side) > 0.9).float()
    loss_fn = build_loss(cfg.loss, 2)
    plain.train()
    wrapped.train()
    loss_plain = loss_fn(plain(x), label)
    loss_plain.backward()
    loss_wrapped = loss_fn(wrapped(x), label)
    assert calls["n"] == 1
    loss_wrapped.backward()
    assert calls["n"] == 2
    handle.remove()

    torch.testing.assert_close(loss_wrapped, loss_plain)
    for (_, p), (_, q) in zip(plain.named_parameters(), wrapped.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)

    # Checkpoints do not depend on whether blocks are wrapped.
    assert plain_state_dict(wrapped).keys() == plain.state_dict().keys()
    load_plain_state_dict(wrapped, plain.state_dict())
    with torch.no_grad():  # no recomputation outside training
        wrapped.eval()
        wrapped(x)


def test_checkpoint_round_trip_restores_state_and_rng(tmp_path: Path) -> None:
    cfg = _compose(["model=unet", "scheduler=onecycle"])
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    schedule = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=5, max_epochs=4)
    for _ in range(3):
        optimizer.step()
        schedule.scheduler.step()
    save_checkpoint(tmp_path / "last.pt", model, optimizer, schedule, Progress(2, 3, 0.5, 1))
    expected = torch.rand(3)

    fresh = build_model(cfg.model)
    opt2 = build_optimizer(cfg.optimizer, fresh.parameters())
    sched2 = build_scheduler(cfg.scheduler, opt2, steps_per_epoch=5, max_epochs=4)
    progress = load_checkpoint(tmp_path / "last.pt", fresh, opt2, sched2)
    assert progress == Progress(2, 3, 0.5, 1)
    torch.testing.assert_close(torch.rand(3), expected)  # RNG continues where it was saved
    assert sched2.scheduler.last_epoch == 3
    assert opt2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(p, q)

    # A longer run replays the new schedule to the saved step rather than reusing the old one.
    opt3 = build_optimizer(cfg.optimizer, build_model(cfg.model).parameters())
    longer = build_scheduler(cfg.scheduler, opt3, steps_per_epoch=5, max_epochs=8)
    load_checkpoint(tmp_path / "last.pt", build_model(cfg.model), opt3, longer)
    assert longer.scheduler.last_epoch == 3 and longer.total_steps == 40


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_flatten_config_is_dotted_resolved_and_truncated() -> None:
    cfg = _compose(["model=unet"])
    flat = flatten_config(cfg)
    assert flat["model.name"] == "unet"
    assert flat["model.in_channels"] == "2"  # interpolation resolved
    assert flat["training.patch_size"] == "[32, 32, 32]"
    assert flat["training.num_threads"] == "None"
    long = flatten_config(OmegaConf.create({"a": {"b": "x" * 10_000}}))
    assert len(long["a.b"]) == 6000


@pytest.mark.parametrize("name", ["dice_ce", "dice", "ce_weighted"])
def test_losses_accept_logits_and_index_labels(name: str) -> None:
    cfg = _compose([f"loss={name}"])
    loss_fn = build_loss(cfg.loss, num_classes=2)
    logits = torch.randn(2, 2, 8, 8, 8, requires_grad=True)
    label = (torch.rand(2, 1, 8, 8, 8) > 0.8).float()
    loss = loss_fn(logits, label)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.grad is not None


@pytest.mark.parametrize("name", [choice for group, choice in CHOICES if group == "model"])
def test_grad_checkpointing_cuts_saved_activations_for_every_model(name: str) -> None:
    # Bytes autograd keeps for backward, not RSS: deterministic, and at a tiny size RSS is
    # all allocator caching and conv scratch buffers (see bench/checkpointing.py).
    from recipes.components.models.grad_checkpointing import saved_tensor_bytes

    side = 32 if name == "basic_unet" else 16  # BasicUNet pools 4 times
    cfg = _compose([f"model={name}", f"training.patch_size=[{side},{side},{side}]"])
    torch.manual_seed(0)
    plain = build_model(cfg.model).train()
    wrapped = copy.deepcopy(plain)
    assert apply_grad_checkpointing(wrapped) > 0
    x = torch.randn(1, cfg.data.in_channels, side, side, side)

    # What autograd saves is known after forward. Backward (the recomputation) runs only
    # where it could alter state: BatchNorm running statistics (MeshNet, RSUNet,
    # AttentionUnet) must come out as after one pass, not two.
    tracks_stats = any(getattr(m, "track_running_stats", False) for m in plain.modules())

    def step(net: torch.nn.Module, backward: bool) -> None:
        out = net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out  # MedNeXt deep supervision
        if backward:
            out.float().square().mean().backward()

    off = saved_tensor_bytes(lambda: step(plain, backward=False), exclude=plain)
    on = saved_tensor_bytes(lambda: step(wrapped, backward=tracks_stats), exclude=wrapped)
    assert on < 0.9 * off, f"{name}: {on / off:.2f}x of the unwrapped network's saved bytes"
    state = plain.state_dict()
    for key, value in plain_state_dict(wrapped).items():
        torch.testing.assert_close(value, state[key], msg=key)
