"""End-to-end runs of the segmentation trainer: real MONAI networks, NIfTI files, MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from recipes.components.data.demo_data import ensure_demo_dataset
from recipes.contract import RunContext
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
from recipes.segmentation.train import train

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("model", "optimizer", "scheduler", "loss", "training")
DEFAULTS = {"model": "segresnet", "optimizer": "adamw", "scheduler": "warmup_cosine"}
DEFAULTS |= {"loss": "dice_ce", "training": "default"}
# The default config plus every other choice of every group, one group at a time.
CHOICES = [None] + [
    (g, p.stem)
    for g in GROUPS
    for p in sorted((CONFIG_DIR / g).glob("*.yaml"))
    if p.stem != DEFAULTS[g]
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny demo data (8 cases of 24^3) and one MLflow store for the whole module."""
    root = tmp_path_factory.mktemp("recipe")
    ensure_demo_dataset(root / "demo", cases=8, size=24)
    return root


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow artifacts and any stray output stay in tmp


def tiny_cfg(workdir: Path, ckpt: Path, *overrides: str, data: Path | None = None) -> DictConfig:
    """Two epochs' worth of nothing: 6 training volumes, 16^3 patches, 2 validation volumes."""
    model = next((o.split("=")[1] for o in overrides if o.startswith("model=")), "segresnet")
    patch = 32 if model == "basic_unet" else 16  # BasicUNet pools 4 times
    base = [
        f"data.root={data or workdir / 'demo'}",
        "data.val_fraction=0.25",
        "model.size=tiny",
        f"training.patch_size=[{patch},{patch},{patch}]",
        "training.samples_per_volume=1",
        "training.max_epochs=1",
        "training.val_interval=1",
        f"training.checkpoint_dir={ckpt}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=base + list(overrides))


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: "default" if c is None else "=".join(c))
def test_every_choice_trains_one_epoch(
    choice: tuple[str, str] | None, workdir: Path, tmp_path: Path
) -> None:
    overrides = [] if choice is None else [f"{choice[0]}={choice[1]}"]
    result = train(tiny_cfg(workdir, tmp_path / "ckpt", *overrides))
    assert result.status == "done" and result.epochs_completed == 1
    assert result.best_epoch == 1 and 0.0 <= (result.best_val_dice or 0.0) <= 1.0
    assert np.isfinite(result.metrics["train_loss"])
    assert {"lr", "epoch_seconds", "samples_per_s", "val_dice", "val_dice_lesion"} <= set(
        result.metrics
    )
    assert (tmp_path / "ckpt" / "last.pt").exists() and (tmp_path / "ckpt" / "best.pt").exists()


def test_bf16_autocast_runs_the_forward_in_bfloat16(workdir: Path, tmp_path: Path) -> None:
    seen: list[tuple[bool, torch.dtype]] = []

    def record(module: torch.nn.Module, _: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Conv3d):
            seen.append((module.training, output.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = train(tiny_cfg(workdir, tmp_path / "ckpt", "training=bf16"))
    finally:
        handle.remove()
    assert result.status == "done" and np.isfinite(result.metrics["val_dice"])
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.bfloat16}  # validation


def test_grad_checkpointing_trains(workdir: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(workdir, tmp_path / "ckpt", "model=unet", "training.grad_checkpointing=true")
    assert train(cfg).status == "done"


def _nan_dataset(src: Path, dst: Path) -> Path:
    """The demo cases with one NaN voxel in every CBF map, as a corrupt export would have."""
    shutil.copytree(src, dst)
    for path in (dst / "imagesTr").glob("*_0000.nii.gz"):
        img = nib.load(path)
        array = img.get_fdata(dtype=np.float32)
        array[12, 12, 12] = np.nan
        nib.save(nib.Nifti1Image(array, img.affine, img.header), path)
    return dst


def test_nan_in_the_data_diverges(workdir: Path, tmp_path: Path) -> None:
    data = _nan_dataset(workdir / "demo", tmp_path / "nan_demo")
    result = train(tiny_cfg(workdir, tmp_path / "ckpt", data=data))
    assert result.status == "diverged"
    assert result.reason == "loss became nan at epoch 1 step 1"
    assert result.epochs_completed == 0 and not (tmp_path / "ckpt" / "last.pt").exists()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("segmentation").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs[0].info.status == "FAILED"


def test_absurd_learning_rate_diverges(workdir: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        workdir, tmp_path / "ckpt", "optimizer=sgd", "optimizer.lr=1e12", "training.max_epochs=3"
    )
    result = train(cfg)
    assert result.status == "diverged"
    assert result.reason is not None and result.reason.startswith("loss became")


def test_standalone_run_logs_to_mlflow(workdir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'standalone.db'}"
    cfg = tiny_cfg(
        workdir,
        tmp_path / "ckpt",
        f"tracking.uri={uri}",
        "tracking.experiment=standalone-test",
        "training.max_epochs=2",
    )
    result = train(cfg)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("standalone-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.name"] == "segresnet" and params["optimizer.lr"] == "0.003"
    assert params["training.patch_size"] == "[16, 16, 16]" and params["data.in_channels"] == "2"
    expected = f"cuda:0 {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    assert run.data.tags["device"] == expected
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    for key in ("lr", "epoch_seconds", "samples_per_s", "val_dice", "val_dice_lesion"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    assert run.data.metrics["best_val_dice"] == pytest.approx(result.best_val_dice)
    config_yaml = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "name: segresnet" in Path(config_yaml).read_text()


def test_resume_under_a_runner_context(workdir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("runner-test")
    exp_id = exp.experiment_id if exp else client.create_experiment("runner-test")
    run_id = client.create_run(exp_id).info.run_id
    seen: list[dict[str, Any]] = []
    ctx = RunContext(uri, run_id, tmp_path / "ckpt", progress=seen.append)

    first = train(tiny_cfg(workdir, tmp_path / "unused", "training.max_epochs=2"), ctx)
    assert first.status == "done" and first.resumed_from_epoch is None
    assert [p["epoch"] for p in seen] == [1, 2] and seen[-1]["max_epochs"] == 2
    assert "val_dice" in seen[-1] and "train_loss" in seen[-1]

    second = train(tiny_cfg(workdir, tmp_path / "unused", "training.max_epochs=3"), ctx)
    assert second.status == "done" and second.resumed_from_epoch == 2
    assert second.epochs_completed == 3 and [p["epoch"] for p in seen] == [1, 2, 3]
    assert not (tmp_path / "unused").exists()  # ctx decides where checkpoints go

    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # the runner ends its run, not the recipe
    assert run.data.params["training.max_epochs"] == "2"  # params are not logged again
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]


def test_resumed_training_matches_uninterrupted_training(workdir: Path, tmp_path: Path) -> None:
    """1 epoch + resume to 2 gives the same weights as 2 epochs in one go."""
    common = ("scheduler=constant", "training.augment=true")
    straight = train(tiny_cfg(workdir, tmp_path / "a", "training.max_epochs=2", *common))
    train(tiny_cfg(workdir, tmp_path / "b", "training.max_epochs=1", *common))
    resumed = train(tiny_cfg(workdir, tmp_path / "b", "training.max_epochs=2", *common))
    assert resumed.resumed_from_epoch == 1
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"])
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.slow
def test_hydra_entry_point_trains_standalone(workdir: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(workdir, tmp_path / "ckpt")
    overrides = [
        "model=unet",
        "model.size=tiny",
        "optimizer=sgd",
        "training.max_epochs=1",
        f"data.root={cfg.data.root}",
        "training.patch_size=[16,16,16]",
        "training.samples_per_volume=1",
        "training.num_threads=1",
        f"tracking.uri=sqlite:///{tmp_path / 'cli.db'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.segmentation", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "status='done'" in proc.stdout
    assert list(tmp_path.glob("outputs/*/*/checkpoints/last.pt"))  # Hydra's output dir
    assert (tmp_path / "cli.db").exists()  # tracking.uri of the standalone run
