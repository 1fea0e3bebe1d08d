"""matrix/em_vesicles.yaml is the EM group's study (seed 000, /work/shared/seeds/
000_c5c62b096464aa83.txt: PyTorch Connectomics' hydra-lv configs): every cell, composed with
the recipe's own Hydra compose, holds each value the seed states. A value that drifts fails
here, with the seed section it comes from.

Section names as in the seed: "Update N" (Key Updates Applied), "Option N" (Performance
Optimization Suggestions), "Quick Command Reference".
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from recipes.components.models.build import build_model
from runner.matrix.load import load_matrix
from runner.matrix.space import parse
from runner.plan import make_plan
from runner.recipe import Composer
from tests.conftest import ROOT

MATRIX = ROOT / "matrix" / "em_vesicles.yaml"

#: key -> value, in every cell (the seed section it comes from)
EVERY_CELL: dict[str, tuple[Any, str]] = {
    "task.name": ("em_instance", "binary + boundary + distance heads (Option 5, Option 8)"),
    "data.voxel_size": ([30.0, 8.0, 8.0], "Option 2: 30nm Z, 8nm XY"),
    "data.image": ("vol*_im.h5", "hydra-lv volumes (Update 7)"),
    "data.val_image": ("vol_val*_im.h5", "Option 6: vol_val*_im.h5"),
    "data.val_label": ("vol_val*_vesicle_ins.h5", "Option 6"),
    "data.val_mask": ("vol_val*_mask.h5", "Option 6"),
    "augmentation.name": ("em", "Update 2: flip, rotate, affine; noise, shift, contrast; EM"),
    "scheduler.name": ("plateau", "Update 3: ReduceLROnPlateau"),
    "scheduler.monitor": ("val_loss", "Update 3 mode min; Option 6: validation loss"),
    "scheduler.factor": (0.5, "Update 3"),
    "scheduler.patience": (50, "Update 3"),
    "scheduler.patience_unit": ("epochs", "Update 3 (Lightning, a validation per epoch)"),
    "scheduler.threshold": (1.0e-4, "Update 3"),
    "scheduler.min_lr": (1.0e-6, "Update 3"),
    "training.grad_clip_norm": (0.5, "Update 4"),
    "training.early_stopping.patience": (100, "Update 5"),
    "training.early_stopping.patience_unit": ("epochs", "Update 5 (as Lightning counts)"),
    "training.early_stopping.min_delta": (1.0e-4, "Update 5"),
    "training.early_stopping.threshold": (0.02, "Update 5"),
    "training.early_stopping.divergence_threshold": (2.0, "Update 5"),
    "training.sw_batch_size": (1, "Update 6"),
    "training.sw_overlap": (0.25, "Update 6"),
    "training.sw_padding_mode": ("replicate", "Update 6"),
    "predict.sw_batch_size": (1, "Update 6, at test time too"),
    "predict.sw_overlap": (0.25, "Update 6"),
    "predict.sw_padding_mode": ("replicate", "Update 6"),
    "training.num_workers": (8, "Option 7"),
    "training.persistent_workers": (True, "Option 7"),
    "training.pin_memory": (True, "Option 7"),
    "data.cache_rate": (1.0, "Option 7"),
    "training.select.metric": ("val_adapted_rand_error", "Option 8: val/adapted_rand"),
    "training.select.mode": ("min", "an error: lower is better (the seed's 'maximize' is not)"),
}

#: per model (Update 1's four architectures): key -> value
PER_MODEL: dict[str, dict[str, Any]] = {
    "mednext": {"variant": "B", "kernel_size": 3, "deep_supervision": True},  # Option 1
    "rsunet": {"norm": "batch"},  # Option 2: rsunet_norm: batch
    "unet": {},
    "basic_unet": {},
}

#: (model, PyTC patch z, y, x) -> patches per step: Option 3 (32 at [24, 96, 96], 16 at
#: [32, 128, 128]) and the Quick Command Reference (MedNeXt: batch_size=16).
PATCHES_PER_STEP = {
    **{(m, (24, 96, 96)): 32 for m in ("unet", "basic_unet", "rsunet")},
    **{(m, (32, 128, 128)): 16 for m in ("unet", "basic_unet", "rsunet")},
    ("mednext", (24, 96, 96)): 16,
    ("mednext", (32, 128, 128)): 16,
}

#: Option 8's sweep: key -> (distribution kind, bounds or choices)
SWEEP = {
    "model.dropout": ("uniform", (0.0, 0.3)),
    "optimizer.lr": ("loguniform", (1.0e-4, 1.0e-2)),
    "optimizer.weight_decay": ("uniform", (0.0, 0.1)),  # {min: 0, max: 0.1}: log can't reach 0
    "loss.weights": ("choice", ([1.0, 0.5, 2.0], [1.0, 1.0, 3.0], [1.0, 1.5, 2.5])),
}


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, Any]]:
    """(cell, composed config) for every cell the plan lists (the search's startup trials
    at each of the 8 points; later trials are asked from results)."""
    plan = make_plan(MATRIX, workdir=tmp_path_factory.mktemp("em_study"))
    out = []
    with Composer(plan.recipe) as composer:  # the recipe's Hydra compose, one context
        for cell in plan.cells:
            cfg = composer.compose([*plan.matrix.spec.base, *cell.overrides])
            assert not isinstance(cfg, Exception), cfg
            out.append((cell, cfg))
    return out


def _get(cfg: Any, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def test_every_cell_holds_the_seeds_values(composed: list[tuple[Any, Any]]) -> None:
    assert len(composed) == 8 * 4  # 4 models x 2 patches, 4 startup trials each
    for cell, cfg in composed:
        for key, (want, section) in EVERY_CELL.items():
            assert _get(cfg, key) == want, f"{cell.run_name}: {key} ({section})"
        for key, want in PER_MODEL[cfg.model.name].items():
            assert cfg.model[key] == want, f"{cell.run_name}: model.{key}"
        x, y, z = cfg.training.patch_size
        patches = cfg.training.batch_size * cfg.training.samples_per_volume
        assert patches == PATCHES_PER_STEP[cfg.model.name, (z, y, x)], cell.run_name
        for key, (kind, args) in SWEEP.items():
            value = _get(cfg, key)
            if kind == "choice":
                assert value in args, f"{cell.run_name}: {key}={value}"
            else:
                assert args[0] <= value <= args[1], f"{cell.run_name}: {key}={value}"
    pairs = {(cfg.model.name, tuple(cfg.training.patch_size)) for _, cfg in composed}
    assert len(pairs) == 8  # every architecture at both patch sizes


def test_the_sweep_is_the_seeds() -> None:
    search = load_matrix(MATRIX).spec.search
    assert search is not None
    assert search.method == "gp"  # W&B's bayes: a Gaussian process (Option 8)
    assert (search.metric, search.mode) == ("val_adapted_rand_error", "min")
    for key, (kind, args) in SWEEP.items():
        dist = parse(search.space[key])
        assert (dist.kind, dist.args) == (kind, args), key


def test_every_model_of_the_study_has_dropout(composed: list[tuple[Any, Any]]) -> None:
    """The sweep samples model.dropout for each architecture: each places it somewhere."""
    seen = set()
    for _, cfg in composed:
        if cfg.model.name in seen:
            continue
        seen.add(cfg.model.name)
        model_cfg = OmegaConf.merge(cfg.model, {"dropout": 0.2})
        with torch.device("meta"):
            net = build_model(model_cfg)
        drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
        assert drops and all(math.isclose(d.p, 0.2) for d in drops), cfg.model.name
    assert seen == set(PER_MODEL)
