"""The widened recipe menu: every new config choice composes and takes a training step.

Kept cheap on purpose (one forward/backward per choice at 16^3, one tiny end-to-end run for
the training mechanics); the full one-epoch runs of every choice are in test_recipe_train.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from monai.networks.utils import one_hot
from monai.transforms import Compose
from omegaconf import DictConfig, OmegaConf

from recipes.components.data.augmentation import augment_transforms
from recipes.components.data.demo_data import ensure_demo_dataset
from recipes.components.models.build import apply_grad_checkpointing, build_model
from recipes.components.models.layerwise import ROLES, param_roles
from recipes.components.training.checkpoint import LAST
from recipes.components.training.losses import build_loss
from recipes.components.training.lr_finder import find_lr
from recipes.components.training.metrics import SegMetrics
from recipes.components.training.optim import build_optimizer, build_scheduler
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
from recipes.segmentation.train import train
from runner.cli import main as runner_main

REPO = Path(__file__).resolve().parents[1]
NEW_MODELS = ["dynunet", "unetr", "swin_unetr", "attention_unet", "mednext", "meshnet", "rsunet"]
LAYERWISE = {"early_encoder": 0.3, "deep_encoder": 1.0, "bottleneck": 1.0}
LAYERWISE |= {"decoder": 1.5, "head": 2.0}
MATRICES = ["isles24_ablation", "meshnet_restarts", "em_vesicles", "segthor_optimizers"]


def _compose(*overrides: str) -> DictConfig:
    base = ["training.patch_size=[16,16,16]", "model.size=tiny"]  # published sizes: GPU work
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=base + list(overrides))


def _batch(side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    label = torch.zeros(1, 1, side, side, side)
    label[..., 4:10, 5:11, 3:9] = 1
    return torch.randn(1, 2, side, side, side), label


@pytest.mark.parametrize("name", NEW_MODELS)
def test_model_steps_with_and_without_grad_checkpointing(name: str) -> None:
    cfg = _compose(f"model={name}")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    wrapped = copy.deepcopy(model)
    assert apply_grad_checkpointing(wrapped) > 0
    loss_fn = build_loss(cfg.loss, 2)
    image, label = _batch()
    losses = []
    for net in (model, wrapped):
        net.train()
        loss = loss_fn(net(image), label)  # deep supervision outputs included
        loss.backward()
        assert torch.isfinite(loss)
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    # Same parameters reached (UNETR's unused cross-attention norms get none either way).
    reached = [[p.grad is not None for p in net.parameters()] for net in (model, wrapped)]
    assert reached[0] == reached[1] and sum(reached[0]) > 0.8 * len(reached[0])
    model.eval()
    with torch.no_grad():  # eval: one full-resolution output, whatever the training output
        assert model(image).shape == (1, 2, 16, 16, 16)


def test_deep_supervision_weights_the_scales() -> None:
    cfg = _compose("model=dynunet")
    loss_fn = build_loss(cfg.loss, 2)
    _, label = _batch()
    good = one_hot(label.long(), 2) * 20.0 - 10.0
    bad = torch.zeros_like(good)
    # Full resolution first: a wrong main output costs more than a wrong coarse one.
    main_wrong = loss_fn(torch.stack([bad, good, good], dim=1), label)
    coarse_wrong = loss_fn(torch.stack([good, good, bad], dim=1), label)
    assert main_wrong > coarse_wrong > 0


@pytest.mark.parametrize(
    ("group", "choice"),
    [("optimizer", "adam"), ("optimizer", "novograd")]
    + [
        ("loss", n)
        for n in (
            "dice_focal",
            "generalized_dice",
            "tversky",
            "dice_bce",
            "dice_bce_cldice",
            "terms",
        )
    ],
)
def test_optimizer_and_loss_choices_take_a_step(group: str, choice: str) -> None:
    cfg = _compose(f"{group}={choice}", "model=meshnet", "model.width=4")
    assert cfg[group].name == choice
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.model.name)
    image, label = _batch()
    before = [p.detach().clone() for p in model.parameters()]
    loss = build_loss(cfg.loss, 2)(model(image), label)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_cldice_weighs_a_broken_thin_structure_beyond_its_voxels() -> None:
    """loss=dice_bce_cldice: a thin stroke predicted with a gap costs more than a prediction
    missing the same number of voxels along its edge (MONAI's soft clDice sees the skeleton
    broken), and its weight is a key (0: plain Dice + BCE)."""
    label = torch.zeros(1, 1, 16, 16, 16)
    label[..., 5:10, 5:10, 1:15] = 1  # a stroke along z, 5 x 5 voxels across
    gap, edge = label.clone(), label.clone()
    gap[..., 7:9] = 0  # the stroke cut in two: 50 voxels
    edge[..., 5, 5:10, 1:11] = 0  # as many voxels fewer, off one face
    assert int(label.sum() - gap.sum()) == int(label.sum() - edge.sum()) == 50

    def logits(mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([-(mask * 2 - 1) * 6, (mask * 2 - 1) * 6], dim=1)

    cfg = _compose("loss=dice_bce_cldice").loss
    assert cfg.lambda_cldice == 0.5
    with_cl = build_loss(cfg, 2)
    plain = build_loss(_compose("loss=dice_bce_cldice", "loss.lambda_cldice=0").loss, 2)
    gap_cost = with_cl(logits(gap), label) - plain(logits(gap), label)
    edge_cost = with_cl(logits(edge), label) - plain(logits(edge), label)
    assert gap_cost > 1.5 * edge_cost > 0


def test_loss_terms_start_and_ramp_by_step() -> None:
    loss_fn = build_loss(_compose("loss=terms").loss, 2).inner
    loss_fn.set_step(0)
    assert loss_fn.factors() == [1.0, 0.0]
    loss_fn.set_step(29)
    assert loss_fn.factors() == [1.0, 0.5]
    loss_fn.set_step(100)
    assert loss_fn.factors() == [1.0, 1.0]


def _lrs(name: str, steps: int, **over: object) -> list[float]:
    cfg = _compose(f"scheduler={name}", *(f"scheduler.{k}={v}" for k, v in over.items()))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=5, max_epochs=4)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule.interval == "val":
            schedule.scheduler.step(0.5)  # a validation Dice that never improves
        else:
            schedule.scheduler.step()
    return lrs


def test_schedulers_step_as_configured() -> None:
    warm = _lrs("cosine_warmup_epochs", 20)  # 1 warm-up epoch of 5 steps, then cosine
    assert warm[0] == pytest.approx(0.1) and warm[5] == pytest.approx(1.0)
    assert warm[5] > warm[12] > warm[19] > 0
    poly = _lrs("poly", 20)
    assert poly[0] == 1.0 and poly[10] == pytest.approx(0.5**0.9)
    plateau = _lrs("plateau", 6, patience=1)  # mode max: a flat Dice halves the lr
    assert plateau[:3] == [1.0, 1.0, 1.0] and plateau[3] == 0.5
    assert (
        build_scheduler(
            _compose("scheduler=plateau").scheduler,
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
            5,
            4,
        ).interval
        == "val"
    )


@pytest.mark.parametrize("name", ["segresnet", "unet", "basic_unet", *NEW_MODELS])
def test_layerwise_lr_gives_one_group_per_role(name: str) -> None:
    cfg = _compose(f"model={name}")
    model = build_model(cfg.model)
    cfg.optimizer.layerwise = LAYERWISE
    optimizer = build_optimizer(cfg.optimizer, model, name)
    roles = [g["role"] for g in optimizer.param_groups]
    assert roles == list(ROLES)  # every architecture has all five roles
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(cfg.optimizer.lr * LAYERWISE[group["role"]])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    # A matrix axis passes the mapping as a string (axes hold scalars only).
    cfg.optimizer.layerwise = "{early_encoder: 0.3, head: 2.0}"
    groups = build_optimizer(cfg.optimizer, model, name).param_groups
    assert [g["lr"] / cfg.optimizer.lr for g in groups] == pytest.approx([0.3, 1, 1, 1, 2])
    # The mapping survives grad checkpointing's wrappers.
    wrapped = copy.deepcopy(model)
    apply_grad_checkpointing(wrapped)
    assert sorted(param_roles(wrapped, name).values()) == sorted(param_roles(model, name).values())


def test_lr_finder_sets_the_lr_and_plots(tmp_path: Path) -> None:
    cfg = _compose("model=meshnet", "model.width=4")
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model, "meshnet")
    before = copy.deepcopy(model.state_dict())
    image, label = _batch()
    loader = torch.utils.data.DataLoader([{"image": image[0], "label": label[0]}] * 4)
    finder_cfg = OmegaConf.create({"start_lr": 1e-5, "end_lr": 1.0, "num_iter": 8})
    lr = find_lr(
        model,
        optimizer,
        build_loss(cfg.loss, 2),
        loader,
        torch.device("cpu"),
        finder_cfg,
        tmp_path / "lr.png",
    )
    assert (tmp_path / "lr.png").stat().st_size > 0
    assert lr is None or optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    for key, value in model.state_dict().items():  # the range test left no trace
        torch.testing.assert_close(value, before[key])


def test_hd95_and_surface_dice_match_monai() -> None:
    _, label = _batch()
    logits = torch.zeros(1, 2, 16, 16, 16)
    logits[:, 1, 5:12, 4:10, 3:8] = 5.0
    spacing = [0.8, 1.0, 2.5]
    cfg = OmegaConf.create({"hd95": True, "surface_dice": True, "surface_tolerance_mm": 1.5})
    metrics = SegMetrics(2, cfg)
    metrics(logits, label, spacing)
    dice, extra = metrics.aggregate()
    pred, target = one_hot(logits.argmax(1, keepdim=True), 2), one_hot(label.long(), 2)
    hd = compute_hausdorff_distance(pred, target, percentile=95, spacing=spacing)
    nsd = compute_surface_dice(pred, target, [1.5], spacing=spacing)
    assert extra["val_hd95"] == pytest.approx(float(hd))
    assert extra["val_surface_dice"] == pytest.approx(float(nsd))
    assert 0 < float(dice) < 1 and extra["val_hd95"] > 0


@pytest.mark.parametrize("preset", ["none", "some", "aggressive", "em"])
def test_augmentation_presets_run(preset: str) -> None:
    cfg = _compose(f"augmentation={preset}")
    transform = Compose(augment_transforms(cfg.augmentation))
    transform.set_random_state(seed=0)
    image, label = _batch()
    out = transform({"image": image[0], "label": label[0]})
    assert out["image"].shape == image[0].shape and out["label"].shape == label[0].shape
    assert (preset == "none") == (len(transform.transforms) == 0)


def test_training_mechanics_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 + GradScaler, clipping, accumulation, plateau, layer-wise lr, LR finder, HD95,
    surface Dice, early stopping and the aggressive preset, in one tiny run."""
    monkeypatch.chdir(tmp_path)
    ensure_demo_dataset(tmp_path / "demo", cases=4, size=16)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _compose(
        f"data.root={tmp_path / 'demo'}",
        "model=meshnet",
        "model.width=4",
        "model.dilations=[1,2,1]",
        "scheduler=plateau",
        "augmentation=aggressive",
        "optimizer.layerwise={early_encoder: 0.3, head: 2.0}",
        "training.amp=fp16",
        "training.grad_clip_norm=1.0",
        "training.accumulate_steps=2",
        "training.samples_per_volume=1",
        "training.batch_size=1",
        "training.max_epochs=3",
        "training.val_interval=1",
        "training.find_lr=true",
        "training.lr_finder.num_iter=5",
        "training.metrics.hd95=true",
        "training.metrics.surface_dice=true",
        "training.early_stopping.good_enough=0.0",  # any Dice: stop after the first validation
        f"training.checkpoint_dir={tmp_path / 'ckpt'}",
        f"tracking.uri={db}",
    )
    result = train(cfg)
    assert result.status == "done" and result.epochs_completed == 1
    assert result.reason is not None and "good_enough" in result.reason
    assert {"val_hd95", "val_surface_dice", "val_dice", "train_loss", "lr"} <= set(result.metrics)
    ckpt = torch.load(tmp_path / "ckpt" / LAST, weights_only=True)
    assert "scaler" in ckpt  # fp16 loss scale resumes with the run
    client = MlflowClient(db)
    run = client.search_runs([client.get_experiment_by_name("segmentation").experiment_id])[0]
    assert run.data.params["training.amp"] == "fp16"
    assert "lr_finder" in [a.path for a in client.list_artifacts(run.info.run_id)]
    artifacts = client.list_artifacts(run.info.run_id, "lr_finder")
    assert [a.path for a in artifacts] == ["lr_finder/lr_finder.png"]
    assert run.data.tags.get("early_stop") == result.reason


@pytest.mark.parametrize("name", MATRICES)
def test_matrix_files_plan(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert runner_main(["plan", f"matrix/{name}.yaml"]) == 0


def test_every_meshnet_restarts_cell_composes_to_what_the_matrix_says(tmp_path: Path) -> None:
    """matrix/meshnet_restarts.yaml is not a seed's study (the MeshNet paper's protocol is
    meshnet_asha.yaml): each of its 15 cells composes, with the recipe's own compose, to the
    matrix's own choices: MeshNet at one of 3 widths, one of 5 restart seeds, Adam, warm-up
    cosine, Dice + CE, on the demo data."""
    from runner.plan import make_plan

    plan = make_plan(REPO / "matrix" / "meshnet_restarts.yaml", tmp_path)
    spec = plan.matrix.spec
    seen = set()
    for cell in plan.cells:
        cfg = plan.recipe.compose([*spec.base, *cell.overrides])
        assert cfg.model.name == "meshnet" and cfg.data.name == "demo"
        assert cfg.optimizer.name == "adam" and cfg.loss.name == "dice_ce"
        assert cfg.scheduler.name == "cosine_warmup_epochs"
        seen.add((cfg.model.width, cfg.seed))
    assert seen == {(w, s) for w in (5, 16, 26) for s in range(5)}
