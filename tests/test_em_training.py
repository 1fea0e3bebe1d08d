"""Training mechanics of the EM study: early stopping on any monitor (patience, convergence
threshold, divergence threshold, exact resume), ReduceLROnPlateau on the validation loss,
sliding-window blending and padding, and real em_instance runs: training, resume, test
mode from a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from monai.inferers import SlidingWindowInferer
from omegaconf import DictConfig, OmegaConf

from recipes.components.data.demo_data import ensure_demo_dataset
from recipes.components.data.em_demo_data import ensure_em_demo_dataset
from recipes.components.data.slices import build_inferer
from recipes.components.training.checkpoint import Progress
from recipes.components.training.early_stopping import EarlyStopping
from recipes.components.training.optim import build_scheduler, monitor_mode
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
from recipes.segmentation.train import train


def _decide(es: EarlyStopping, values: list[float], start: int = 1) -> list[str | None]:
    out = []
    for epoch, value in enumerate(values, start):
        stop = es.update(Progress(), {"val_loss": value, "val_dice": 0.5}, epoch)
        out.append(None if stop is None else ("diverged: " if stop.diverged else "") + stop.reason)
    return out


def test_early_stopping_patience_threshold_and_divergence_on_val_loss() -> None:
    patience = EarlyStopping({"monitor": "val_loss", "patience": 2, "min_delta": 0.01}, 1)
    assert patience.mode == "min"
    assert _decide(patience, [1.0, 0.9, 0.895, 0.894]) == [
        None,
        None,
        None,
        "no val_loss gain > 0.01 in 2 epochs",
    ]
    converged = EarlyStopping({"monitor": "val_loss", "threshold": 0.02}, 1)
    assert _decide(converged, [0.5, 0.1, 0.019]) == [
        None,
        None,
        "val_loss 0.019 reached threshold 0.02",
    ]
    # Above the divergence threshold from the start is not a collapse; rising past it is.
    diverging = EarlyStopping({"monitor": "val_loss", "divergence_threshold": 2.0}, 1)
    assert _decide(diverging, [3.0, 2.5, 1.5, 1.9, 2.3])[:4] == [None] * 4
    assert diverging.history[-1] == (5, 2.3)
    last = _decide(
        EarlyStopping({"monitor": "val_loss", "divergence_threshold": 2.0}, 1), [1.0, 2.3]
    )
    assert last == [None, "diverged: val_loss 2.3 diverged past 2.0"]
    nan = _decide(
        EarlyStopping({"monitor": "val_loss", "divergence_threshold": 2.0}, 1), [math.nan]
    )
    assert nan[0] is not None and nan[0].startswith("diverged")
    assert [monitor_mode(m) for m in ("val_adapted_rand_error", "val_voi", "val_dice")] == [
        "min",
        "min",
        "max",
    ]
    with pytest.raises(KeyError, match=r"monitor='val_are' is not a validation metric .*val_loss"):
        EarlyStopping({"monitor": "val_are"}, 1).update(Progress(), {"val_loss": 1.0}, 1)


def test_early_stopping_history_resumes_exactly(tmp_path: Path) -> None:
    cfg = {"monitor": "val_loss", "patience": 2, "min_delta": 0.0}
    values = [1.0, 0.8, 0.9, 0.85, 0.95]
    straight = _decide(EarlyStopping(cfg, 1), values)
    first = EarlyStopping(cfg, 1)
    _decide(first, values[:3])
    first.save(tmp_path)
    resumed = EarlyStopping(cfg, 1)
    resumed.load(tmp_path, epoch=2)  # last.pt of epoch 2: epoch 3 is replayed
    assert resumed.history == [(1, 1.0), (2, 0.8)]
    assert _decide(resumed, values[2:], start=3) == straight[2:]
    assert straight[-1] == "no val_loss gain > 0.0 in 2 epochs"


def test_plateau_on_the_validation_loss_halves_the_lr() -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = OmegaConf.create(
        {"name": "plateau", "interval": "val", "monitor": "val_loss", "factor": 0.5}
        | {"patience": 1, "threshold": 1.0e-4, "min_lr": 1.0e-6}
    )
    schedule = build_scheduler(cfg, optimizer, 4, 10)
    assert schedule.interval == "val" and schedule.monitor == "val_loss"
    lrs = []
    for loss in [1.0, 0.5, 0.6, 0.7, 0.8]:  # falls, then rises for 3 validations
        schedule.scheduler.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("padding", ["replicate", "constant", "reflect"])
def test_sliding_window_blending_and_padding_are_config_keys(mode: str, padding: str) -> None:
    tcfg = OmegaConf.create(
        {"patch_size": [8, 8, 8], "sw_batch_size": 1, "sw_overlap": 0.25}
        | {"sw_mode": mode, "sw_padding_mode": padding}
    )
    inferer = build_inferer(tcfg, None)
    assert isinstance(inferer, SlidingWindowInferer)
    assert inferer.mode == mode and inferer.padding_mode == padding
    volume = torch.arange(6 * 6 * 4, dtype=torch.float32).reshape(1, 1, 6, 6, 4)
    out = inferer(volume, lambda x: x)  # smaller than a window: padded, then cropped back
    torch.testing.assert_close(out, volume)
    slices = build_inferer(OmegaConf.merge(tcfg, {"patch_size": [8, 8]}), 2)
    assert slices.mode == mode and slices.padding_mode == padding


@pytest.fixture(scope="module")
def em_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_em_demo_dataset(tmp_path_factory.mktemp("em") / "em", train=2, val=1)


def _em_cfg(root: Path, ckpt: Path, *overrides: str) -> DictConfig:
    base = [
        "data=em_demo",
        f"data.root={root}",
        "task=em_instance",
        "model=rsunet",
        "model.features=[4,8,16]",
        "augmentation=em",
        "training.patch_size=[32,32,8]",
        "training.batch_size=1",
        "training.samples_per_volume=1",
        "training.max_epochs=2",
        "training.val_interval=1",
        "training.sw_mode=gaussian",
        "training.sw_padding_mode=replicate",
        "training.num_threads=1",
        f"training.checkpoint_dir={ckpt}",
        f"tracking.uri=sqlite:///{root.parent / 'mlflow.db'}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=base + list(overrides))


def test_em_instance_trains_and_tests_a_checkpoint(
    em_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stopping = [
        "scheduler=plateau",
        "scheduler.monitor=val_loss",
        "training.select.metric=val_adapted_rand_error",  # early stopping's monitor too
        "training.early_stopping.patience=5",
        "training.grad_clip_norm=0.5",
    ]
    result = train(_em_cfg(em_data, tmp_path / "ckpt", *stopping))
    assert result.status == "done" and result.epochs_completed == 2
    # best.pt is the epoch of the lowest adapted Rand error (training.select, mode auto: min)
    assert (result.select_metric, result.select_mode) == ("val_adapted_rand_error", "min")
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch and best["best_metric"] == result.best_metric
    wanted = {"val_loss", "val_adapted_rand_error", "val_voi_split", "val_voi_merge"}
    assert wanted | {"val_dice", "val_dice_vesicle"} <= set(result.metrics)
    assert 0.0 <= result.metrics["val_adapted_rand_error"] <= 1.0
    assert (tmp_path / "ckpt" / "early_stopping.json").exists()
    client = MlflowClient(f"sqlite:///{em_data.parent / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("segmentation").experiment_id])[0]
    assert run.data.params["data.voxel_size"] == "[30.0, 8.0, 8.0]"
    assert run.data.params["task.name"] == "em_instance"
    history = client.get_metric_history(run.info.run_id, "val_adapted_rand_error")
    lowest = min(history, key=lambda m: (m.value, m.step))
    assert (lowest.step, lowest.value) == (result.best_epoch, pytest.approx(result.best_metric))
    assert run.data.metrics["best_val_adapted_rand_error"] == pytest.approx(lowest.value)
    dice = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_dice")}
    assert run.data.metrics["best_val_dice"] == pytest.approx(dice[lowest.step])

    out = tmp_path / "pred"
    test = train(
        _em_cfg(
            em_data,
            tmp_path / "test",
            "mode=test",
            f"test_checkpoint={tmp_path / 'ckpt' / 'best.pt'}",
            f"test_output_dir={out}",
        )
    )
    assert test.status == "done" and test.epochs_completed == 0
    assert {"test_dice", "test_adapted_rand_error", "test_voi", "test_loss"} <= set(test.metrics)
    with h5py.File(out / "vol_val1_im_pred.h5") as f:
        assert f["main"].shape == (16, 80, 80)  # z, y, x as the input stack
    with pytest.raises(FileNotFoundError, match="mode=test needs test_checkpoint"):
        train(_em_cfg(em_data, tmp_path / "none", "mode=test"))


def test_em_resume_with_artefacts_matches_uninterrupted_training(
    em_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The EM artefacts (all at probability 1) and the early-stopping history follow (seed,
    epoch, case): 1 epoch + resume to 2 gives the weights of 2 epochs in one go."""
    monkeypatch.chdir(tmp_path)
    common = [
        "scheduler=constant",
        "augmentation.misalignment_prob=1.0",
        "augmentation.missing_section_prob=1.0",
        "augmentation.motion_blur_prob=1.0",
        "training.early_stopping.monitor=val_loss",
        "training.early_stopping.patience=3",
    ]
    straight = train(_em_cfg(em_data, tmp_path / "a", *common))
    train(_em_cfg(em_data, tmp_path / "b", "training.max_epochs=1", *common))
    resumed = train(_em_cfg(em_data, tmp_path / "b", *common))
    assert resumed.resumed_from_epoch == 1
    assert resumed.metrics["val_loss"] == pytest.approx(straight.metrics["val_loss"])
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_a_monitor_past_its_divergence_threshold_ends_the_run_diverged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monitor whose course is known in advance, the lr of a one-epoch warm-up then cosine
    decay (mode max: higher is "better"), falls below the threshold at epoch 3: the run
    stops there with status diverged, and says why."""
    monkeypatch.chdir(tmp_path)
    root = ensure_demo_dataset(tmp_path / "demo", cases=8, size=16)
    overrides = [
        f"data.root={root}",
        "data.val_fraction=0.25",
        "model=unet",
        "model.size=tiny",  # the published UNet is GPU work (and needs 32^3 patches)
        "scheduler=cosine_warmup_epochs",
        "training.patch_size=[16,16,16]",
        "training.samples_per_volume=1",
        "training.max_epochs=4",  # 3 steps an epoch: 3 warm-up steps, 9 of cosine decay
        "training.val_interval=1",
        "training.early_stopping.monitor=lr",
        "training.early_stopping.mode=max",
        f"training.early_stopping.divergence_threshold={0.5 * 3.0e-3}",
        f"training.checkpoint_dir={tmp_path / 'ckpt'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        result = train(compose(CONFIG_NAME, overrides=overrides))
    assert result.status == "diverged" and result.epochs_completed == 3
    assert result.reason is not None and "lr" in result.reason and "diverged past" in result.reason
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("segmentation").experiment_id])[0]
    assert run.info.status == "FAILED" and run.data.tags["divergence"] == result.reason
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    assert len(lrs) == 3 and min(lrs[:2]) > 1.5e-3 > lrs[2]  # stopped at the first crossing
