"""matrix/isles24_medsegdiff.yaml against seed 002 (the MedSegDiff group's handover of
2025-12-14, /work/shared/seeds/002_c1b432909c7d0857.txt): every cell composed with the
recipe's own Hydra compose, each value the seed states asserted from the table below, which
names the seed's section it comes from. A drifting config, a dropped run, a wrong batch or a
misspelt run-name token fails here."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from recipes.components.diffusion.noise import build_schedulers
from runner.plan import Plan, make_plan
from runner.recipe import Composer
from tests.conftest import ROOT
from tests.test_diffusion_reference import SECTIONS50

MATRIX = ROOT / "matrix" / "isles24_medsegdiff.yaml"

#: (config key, value, the seed's words) for every cell of their three models.
EVERY_CELL: list[tuple[str, Any, str]] = [
    (
        "data.channels",
        ["cbf", "tmax"],
        "Dataset: ISLES24 (CBF + TMAX modalities, 2D slices, fold 0)",
    ),
    ("data.fold", 0, "Dataset: ... fold 0"),
    ("dims.spatial_dims", 2, "Dataset: ... 2D slices"),
    ("diffusion.timesteps", 1000, "Diffusion: DDIM with 50 steps (respaced from 1000 timesteps)"),
    ("diffusion.sampling_steps", 50, "Diffusion: DDIM with 50 steps"),
    ("diffusion.sampler", "ddim", "Diffusion: DDIM"),
    ("diffusion.noise_schedule", "cosine", "Diffusion: ... cosine noise schedule"),
    ("diffusion.eta", 0.0, "DDIM eta 0 (Next Steps: 'Experiment with eta > 0')"),
    ("training.patch_size", [256, 256], "Model Configurations: image_size: 256"),
    ("training.max_steps", 500000, "Pending Experiments: training.max_steps=500000"),
    ("training.val_batch_size", 64, "Pending Experiments: validation.val_batch_size=64"),
    ("augmentation.name", "aggressive", "Pending Experiments: augmentation=aggressive_2d"),
    ("optimizer.name", "adamw", "Optimizers: adamw_*_wd00"),
    ("optimizer.weight_decay", 0.0, "Optimizers: Weight Decay 0.0"),
]
#: Their models (Model Configurations): channels, time embedding, heads x dims, bottleneck
#: transformer layers, and the batch each fits ("Memory: Fits batch_size=...").
MODELS: dict[str, dict[str, Any]] = {
    "medsegdiff_16c": {"channels": [16, 32, 64, 128], "time_embed_dim": 128, "num_heads": 6,
                       "head_dim": 4, "bottleneck_layers": 1, "batch": 32},
    "medsegdiff_32c_simple": {"channels": [32, 64, 128, 256], "time_embed_dim": 128,
                              "num_heads": 6, "head_dim": 4, "bottleneck_layers": 1, "batch": 16},
    "medsegdiff_32c_full": {"channels": [32, 64, 128, 256], "time_embed_dim": 256,
                            "num_heads": 8, "head_dim": 8, "bottleneck_layers": 2, "batch": 16},
}  # fmt: skip
#: Learning rates (Optimizers: 1e-4 standard 16c, 5e-5 32c, 2e-4 aggressive), schedulers
#: (Schedulers), losses (Loss Configurations).
LRS = {1e-4, 5e-5, 2e-4}
SCHEDULERS = {"constant": None, "warmup_cosine_10pct": 0.1, "warmup_cosine_5pct": 0.05}
LOSSES = {
    "mse": (1.0, 0.0, 0.0, 0),  # mse_loss_only: MSE only
    "mse_aux_light": (1.0, 0.1, 0.1, 10000),  # MSE + 0.1xDice + 0.1xBCE, 10K warmup
}
#: The runs the seed lists (Completed Runs, Pending Experiments, LR/Scheduler Ablation):
#: (model, batch, amp, lr, scheduler, loss).
LISTED_RUNS = {
    "16c baseline, No AMP": ("medsegdiff_16c", 32, "fp32", 1e-4, "constant", "mse"),
    "16c + AMP BF16 (best, 7 %)": ("medsegdiff_16c", 32, "bf16", 1e-4, "constant", "mse"),
    "32c-full (NaN)": ("medsegdiff_32c_full", 16, "bf16", 1e-4, "constant", "mse"),
    "Priority 1": ("medsegdiff_16c", 32, "bf16", 1e-4, "warmup_cosine_10pct", "mse_aux_light"),
    "Priority 2": ("medsegdiff_32c_simple", 16, "bf16", 5e-5, "warmup_cosine_10pct", "mse"),
    "Priority 3": (
        "medsegdiff_32c_simple", 16, "bf16", 5e-5, "warmup_cosine_10pct", "mse_aux_light"
    ),
    "ablation 5e-5 constant": ("medsegdiff_16c", 32, "bf16", 5e-5, "constant", "mse"),
    "ablation 5e-5 wcos10": ("medsegdiff_16c", 32, "bf16", 5e-5, "warmup_cosine_10pct", "mse"),
    "ablation 1e-4 wcos10": ("medsegdiff_16c", 32, "bf16", 1e-4, "warmup_cosine_10pct", "mse"),
}  # fmt: skip
#: Run Name Convention: the example's tokens after the model and before the timestamp.
SEED_NAME = "_b32_ampBF16_adamw1e4_wd00_wcos10_s500K_lMSE_dw10_d01_b01_w10K_augAGG2D_"
SEED_DIFFUSION = "_ds1000_nzcosine_tr50_"


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan(MATRIX)


@pytest.fixture(scope="module")
def composed(plan: Plan) -> list[tuple[Any, Any]]:
    """Each cell's config as its job composes it (base + the cell's overrides), in one Hydra
    context (the recipe's own compose, runner.recipe.Composer)."""
    base = plan.matrix.spec.base
    with Composer(plan.recipe) as composer:
        out = [(cell, composer.compose([*base, *cell.overrides])) for cell in plan.cells]
    assert all(isinstance(cfg, DictConfig) for _, cfg in out)
    return out


def test_every_cell_holds_the_seeds_values(composed: list[tuple[Any, Any]]) -> None:
    assert len(composed) == 74
    ran: dict[tuple[Any, ...], str] = {}
    for cell, cfg in composed:
        name = cfg.model.get("name")
        key = cfg.model_choice if "model_choice" in cfg else cell.values["model"]
        if name == "concat_unet":
            continue  # MONAI's baseline, not the group's
        for path, value, words in EVERY_CELL:
            got = OmegaConf.select(cfg, path)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == value, f"{cell.run_name}: {path}={got!r}, seed says {words!r}"
        # their sampler: improved-diffusion's "50" respacing (their openai_ddim_50steps.yaml)
        _, sampler = build_schedulers(cfg.diffusion)
        assert sampler.timesteps.tolist() == SECTIONS50[::-1], cell.run_name
        assert cfg.optimizer.lr in LRS
        assert cfg.training.batch_slices in (16, 32)
        scheduler = cell.values["scheduler"]
        assert cfg.scheduler.get("warmup_fraction") == SCHEDULERS[scheduler]
        if key in MODELS:
            want = MODELS[key]
            for k in ("channels", "time_embed_dim", "num_heads", "head_dim", "bottleneck_layers"):
                assert OmegaConf.to_container(cfg.model)[k] == want[k], (cell.run_name, k)
            assert cfg.training.batch_slices == want["batch"], cell.run_name
            weights = (cfg.loss.diffusion_weight, cfg.loss.dice_weight, cfg.loss.bce_weight,
                       cfg.loss.aux_warmup_steps)  # fmt: skip
            assert weights == LOSSES[cell.values["loss"]], cell.run_name
            run = (key, cfg.training.batch_slices, cfg.training.amp, cfg.optimizer.lr,
                   scheduler, cell.values["loss"])  # fmt: skip
            ran[run] = cell.run_name
            if cfg.training.amp == "fp32":  # Completed Runs: "16c baseline ... No AMP"
                assert key == "medsegdiff_16c" and cfg.optimizer.lr == 1e-4
            else:
                assert cfg.training.amp == "bf16"  # "AMP BF16" in training and sampling
        else:  # Models Evaluated: ORGMedSegDiff with mse_with_calibration
            assert key == "org_medsegdiff_s" and cfg.model.version == "new"
            assert cell.values["loss"] == "mse_with_calibration"
            assert cfg.loss.calibration_weight == 10.0 and cfg.loss.calibration_loss == "bce"
    for what, run in LISTED_RUNS.items():
        assert run in ran, f"the seed's run '{what}' {run} is not a cell"


def test_run_names_spell_the_seeds_convention(composed: list[tuple[Any, Any]]) -> None:
    names = {cell.run_name for cell, _ in composed}
    (priority_1,) = [
        n for n in names if n.startswith("medsegdiff_16c" + SEED_NAME) and "seed0" in n
    ]
    assert SEED_DIFFUSION in priority_1 and priority_1.endswith("_seed0_{started}")
    assert priority_1.startswith("medsegdiff_16c_b32_ampBF16_adamw1e4_wd00_wcos10_s500K")
    assert any(n.startswith("medsegdiff_32c_simple_b16_ampBF16_adamw5e5_wd00_") for n in names)
    assert len(names) == len(composed)


def test_the_comparable_dice_comes_first(plan: Plan) -> None:
    assert plan.matrix.spec.metrics[0] == "val_dice_2d_single"
