"""The 2D variant (``dims=2d``): slices of real NIfTI volumes, real MONAI networks in 2D,
whole-volume validation by slice-wise inference, and picking it from a matrix in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from monai.transforms import Compose
from omegaconf import DictConfig

from recipes.components.data.augmentation import augment_transforms
from recipes.components.data.loaders import DataBundle, build_data, load_transforms
from recipes.components.data.slices import build_inferer, slice_axis_of
from recipes.components.models.build import THREE_D_ONLY, TWO_D_CAPABLE, build_model
from recipes.components.training.checkpoint import Progress
from recipes.components.training.losses import build_loss
from recipes.components.training.optim import build_optimizer, build_scheduler
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
from recipes.segmentation.train import Trainee, train, train_one_epoch, validate
from runner.cli import main as runner_main
from tests import datasets

SIZE = 16


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return datasets.nnunet(tmp_path_factory.mktemp("demo2d") / "demo", cases=4, size=SIZE)


def _cfg(demo: Path, *overrides: str) -> DictConfig:
    base = [
        "dims=2d",
        f"data.root={demo}",
        "data.val_fraction=0.25",
        f"training.patch_size=[{SIZE},{SIZE}]",
        "training.samples_per_volume=2",
        "training.batch_size=2",
        "training.max_epochs=1",
        "training.val_interval=1",
        "training.num_threads=1",
        "model.size=tiny",  # published sizes are GPU work
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=base + list(overrides))


def _data(cfg: DictConfig) -> DataBundle:
    return build_data(cfg.data, cfg.training, cfg.seed, cfg.augmentation, slice_axis_of(cfg))


@pytest.fixture(scope="module")
def bundle(demo: Path) -> DataBundle:
    return _data(_cfg(demo))


def _slices(volume: torch.Tensor, axis: int) -> list[torch.Tensor]:
    """(C, X, Y, Z) -> the 2D slices (C, ., .) across spatial ``axis``."""
    return list(volume.movedim(axis + 1, 0))


def test_2d_patches_are_slices_of_the_volumes(demo: Path) -> None:
    """Without augmentation every 2D patch is one whole slice (16^3 volumes, 16^2 patches)
    of a training volume as loaded and normalised, across the configured axis."""
    for axis in (2, 0):
        cfg = _cfg(demo, "training.augment=false", f"dims.slice_axis={axis}")
        data = _data(cfg)
        load = Compose(load_transforms(cfg.data))
        volumes = [load(item) for item in data.train_dataset.dataset.data]
        slices = [
            torch.cat([image, label])
            for v in volumes
            for image, label in zip(
                _slices(v["image"].as_tensor(), axis),
                _slices(v["label"].as_tensor(), axis),
                strict=True,
            )
        ]
        batch = next(iter(data.train_loader))
        image, label = batch["image"].as_tensor(), batch["label"].as_tensor()
        assert image.shape == (4, 2, SIZE, SIZE) and label.shape == (4, 1, SIZE, SIZE)
        for patch in torch.cat([image, label], 1):
            assert any(torch.equal(patch, s) for s in slices)
        assert label.sum() > 0  # foreground-centred sampling finds lesion slices
        val = next(iter(data.val_loader))["image"]
        assert val.shape == (1, 2, SIZE, SIZE, SIZE)  # validation stays on volumes


def _is_2d(model: torch.nn.Module) -> bool:
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    return bool(convs) and all(len(c.kernel_size) == 2 for c in convs)


@pytest.mark.parametrize("name", TWO_D_CAPABLE)
def test_each_2d_model_trains_a_step_and_validates_whole_volumes(
    name: str, demo: Path, bundle: DataBundle
) -> None:
    if name == "basic_unet":  # it pools 4 times: 16^2 would leave 1 pixel for its norms
        cfg = _cfg(demo, f"model={name}", "training.patch_size=[32,32]")
        bundle = _data(cfg)
    else:
        cfg = _cfg(demo, f"model={name}")
    assert cfg.model.spatial_dims == 2
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert _is_2d(model), f"{name} built with 3D layers"
    loss_fn = build_loss(cfg.loss, 2)
    optimizer = build_optimizer(cfg.optimizer, model, name)
    schedule = build_scheduler(cfg.scheduler, optimizer, len(bundle.train_loader), 1)
    before = [p.detach().clone() for p in model.parameters()]
    bundle.set_epoch(1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainee = Trainee(
        model, loss_fn, optimizer, schedule, scaler, torch.device("cpu"), cfg.training
    )
    loss, patches, _ = train_one_epoch(trainee, bundle.train_loader, 1, Progress())
    assert np.isfinite(loss) and patches == 3 * 2  # 3 training volumes x 2 slices
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    model.eval()
    volume = next(iter(bundle.val_loader))["image"].as_tensor()
    with torch.no_grad():
        logits = build_inferer(cfg.training, slice_axis_of(cfg))(volume, model)
    assert logits.shape == (1, 2, SIZE, SIZE, SIZE)  # slices restacked into the volume
    dice, _ = validate(model, bundle.val_loader, torch.device("cpu"), cfg)
    assert dice.shape == (1,) and 0.0 <= float(dice[0]) <= 1.0


def test_slice_inference_is_the_2d_model_applied_per_slice(demo: Path, bundle: DataBundle) -> None:
    """Whole-volume validation predicts each slice on its own, as nnU-Net's 2D config does."""
    cfg = _cfg(demo, "model=meshnet", "model.width=4")
    model = build_model(cfg.model).eval()
    volume = next(iter(bundle.val_loader))["image"].as_tensor()
    with torch.no_grad():
        stacked = build_inferer(cfg.training, 2)(volume, model)
        by_hand = torch.stack([model(volume[..., z]) for z in range(SIZE)], dim=-1)
    torch.testing.assert_close(stacked, by_hand, rtol=1e-4, atol=1e-5)


def test_2d_trains_end_to_end_and_logs_it(demo: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg(
        demo,
        "model=unet",
        "augmentation=aggressive",
        f"training.checkpoint_dir={tmp_path / 'ckpt'}",
        f"tracking.uri={uri}",
        "tracking.experiment=two-d",
    )
    result = train(cfg)
    assert result.status == "done" and np.isfinite(result.metrics["val_dice"])
    assert (tmp_path / "ckpt" / "best.pt").exists()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("two-d").experiment_id])
    assert run.data.params["dims.spatial_dims"] == "2"
    assert run.data.params["model.spatial_dims"] == "2"
    assert run.data.params["training.patch_size"] == f"[{SIZE}, {SIZE}]"


@pytest.mark.parametrize("preset", ["some", "aggressive", "em"])
def test_augmentation_presets_work_on_slices(preset: str, demo: Path) -> None:
    cfg = _cfg(demo, f"augmentation={preset}")
    transform = Compose(augment_transforms(cfg.augmentation, spatial_dims=2))
    transform.set_random_state(seed=0)
    image, label = torch.randn(2, SIZE, SIZE), (torch.rand(1, SIZE, SIZE) > 0.5).float()
    for _ in range(5):
        out = transform({"image": image, "label": label})
        assert out["image"].shape == image.shape and out["label"].shape == label.shape
        assert set(out["label"].unique().tolist()) <= {0.0, 1.0}  # nearest for labels


def test_3d_only_models_and_inconsistent_configs_are_refused(demo: Path) -> None:
    assert {"rsunet"} == THREE_D_ONLY
    with pytest.raises(
        ValueError, match=r"'rsunet' is 3D only .* 2D-capable models: attention_unet"
    ):
        build_model(_cfg(demo, "model=rsunet").model)
    for overrides, match in [
        (["training.patch_size=[16,16,16]"], "dims=2d needs a 2-element training.patch_size"),
        (["dims=3d"], r"3D training needs a 3-element training.patch_size, got \[16, 16\]"),
        (["dims.slice_axis=3"], "dims.slice_axis must be 0, 1 or 2"),
        (["model.spatial_dims=3"], "model.spatial_dims=3 but dims.spatial_dims=2"),
        (
            ["dims=3d", "training.patch_size=[16,16,16]", "dims.slice_axis=0"],
            r"dims.slice_axis only applies to 2D training \(dims=2d\)",
        ),
    ]:
        with pytest.raises(ValueError, match=match):
            slice_axis_of(_cfg(demo, *overrides))


def test_a_matrix_picks_the_2d_variant_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(
        "name: two_d\nrecipe: segmentation\nbase: [data=demo]\n"
        "axes:\n  dims: [2d, 3d]\n  model: [unet, meshnet]\n"
    )
    assert runner_main(["plan", "--json", "m.yaml"]) == 0
    out = capsys.readouterr().out
    for name in ("2d_unet", "3d_unet", "2d_meshnet", "3d_meshnet"):
        assert f'"{name}"' in out
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nrecipe: segmentation\nbase: [dims=2.5d]\naxes:\n  seed: [0]\n"
    )
    assert runner_main(["plan", "bad.yaml"]) == 2
    assert "unknown dims choice '2.5d'" in capsys.readouterr().err
