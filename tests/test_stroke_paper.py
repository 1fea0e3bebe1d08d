"""The stroke group's studies as their paper runs them (seed 001, shared/seeds/001_*.txt):
every cell of matrix/isles24_ablation.yaml and matrix/meshnet_asha.yaml is composed with the
recipe's own Hydra compose and checked against the paper's values, each from a table that
says where it comes from; MeshNet's dilation schedule against the lab's public code; U-Mamba
refused with its reason."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from runner.cli import main
from runner.plan import Plan, make_plan
from runner.recipe import Composer
from tests.conftest import ROOT

SEED = "shared/seeds/001 §"
ARC = "arc-meshchop docs/reference/dataset.md @ 9b40777 (the paper as it reads it; not the seed)"

#: (key of the composed config, the paper's value, where the value is stated).
TRAINING: list[tuple[str, Any, str]] = [
    ("optimizer.name", "adamw", f"{SEED} Baseline Model Configuration / Optimizer: AdamW"),
    ("optimizer.eps", 1e-4, f"{SEED} Optimizer: AdamW, eps=1e-4"),
    ("scheduler.name", "onecycle", f"{SEED} Learning Rate Scheduler: OneCycleLR"),
    ("scheduler.interval", "step", f"{SEED} Training Loop Pseudocode: scheduler.step() per batch"),
    ("scheduler.div_factor", 100.0, f"{SEED} OneCycleLR Behavior: start at max_lr / 100"),
    ("loss.name", "ce_weighted", f"{SEED} Loss Function: CrossEntropyLoss(weight=...)"),
    ("loss.label_smoothing", 0.01, f"{SEED} Loss Function: label_smoothing=0.01"),
    ("training.amp", "fp16", f"{SEED} Half-Precision Training (FP16), GradScaler"),
    ("training.batch_size", 1, f"{SEED} Optimizer: AdamW table, Batch size 1"),
    ("training.samples_per_volume", 1, f"{SEED} Batch size 1: one volume per step"),
    ("training.patch_size", [256, 256, 256], f"{SEED} Half-Precision Training: full 256³ volume"),
    ("training.max_epochs", 50, f"{SEED} Optimizer: AdamW table, Epochs 50"),
    ("training.val_interval", 1, f"{SEED} Training Loop Pseudocode: validation every epoch"),
    ("data.spacing", [1.0, 1.0, 1.0], f"1 mm isotropic: {ARC}"),
    ("augmentation.name", "none", f"no augmentation: {ARC}"),
]
#: The baselines' fixed hyper-parameters (seed § Baseline Model Configuration).
BASELINES: list[tuple[str, Any, str]] = [
    *TRAINING,
    ("optimizer.lr", 1e-3, f"{SEED} Optimizer: AdamW, lr=0.001"),
    ("optimizer.weight_decay", 3e-5, f"{SEED} Optimizer: AdamW, weight_decay=3e-5"),
    ("scheduler.pct_start", 0.01, f"{SEED} Learning Rate Scheduler: pct_start=0.01"),
    ("loss.class_weights", [0.5, 1.0], f"{SEED} Loss Function: weight=[0.5, 1.0]"),
]
#: MeshNet's search (seed § MeshNet-Specific Configuration): what it doesn't search is fixed.
MESHNET: list[tuple[str, Any, str]] = [
    *TRAINING,
    ("model.name", "meshnet", f"{SEED} MeshNet-Specific Configuration"),
    ("loss.class_weights", None, f"{SEED} Search Space: background weight searched, lesion 1"),
]
SPACE = {  # seed § Search Space
    "model.width": "int_uniform(5, 21)",
    "optimizer.lr": "loguniform(1e-4, 4e-2)",
    "optimizer.weight_decay": "loguniform(1e-4, 4e-2)",
    "loss.background_weight": "uniform(0, 1)",
    "scheduler.pct_start": "choice(0.02, 0.1, 0.2)",
}


def configs(plan: Plan, cells: list[Any]) -> list[Any]:
    """Each cell's config, composed by the recipe's own Hydra compose (in one context)."""
    out = []
    with Composer(plan.recipe) as composer:
        for cell in cells:
            cfg = composer.compose([*plan.matrix.spec.base, *cell.overrides])
            if isinstance(cfg, Exception):
                raise cfg
            out.append(cfg)
    return out


def _get(cfg: Any, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and math.isclose(float(a), float(b), rel_tol=1e-9)
    return bool(a == b)


def drift(plan: Plan, cells: list[Any], table: list[tuple[str, Any, str]]) -> list[str]:
    """Every (cell, key) whose composed value is not the paper's, with the source."""
    out = []
    for cell, cfg in zip(cells, configs(plan, cells), strict=True):
        for key, want, source in table:
            got = _get(cfg, key)
            if not _same(got, want):
                out.append(f"{cell.run_name}: {key}={got!r}, the paper's {want!r} ({source})")
    return out


def _outer_folds(plan: Plan, cells: list[Any], outer: int, inner: int) -> set[int]:
    folds = set()
    for cfg in configs(plan, cells):
        data = cfg.data
        test = OmegaConf.to_container(data.test)
        assert set(test) == {"fold", "folds"} and test["folds"] == outer
        assert (data.num_folds, data.fold) == (inner, 0)  # inner fold 0 validates
        folds.add(test["fold"])
    return folds


def test_every_baseline_cell_trains_as_the_paper(project: Path) -> None:
    plan = make_plan(ROOT / "matrix" / "isles24_ablation.yaml", workdir=project)
    assert drift(plan, plan.cells, BASELINES) == []
    assert {c.values["model"] for c in plan.cells} == {
        "segresnet", "mednext", "swin_unetr", "unetr", "unet",
    }  # fmt: skip
    assert "seed" not in plan.matrix.spec.axes  # seed § Key Training Considerations: one run
    assert len(plan.cells) == 5 * 3
    assert _outer_folds(plan, plan.cells, 3, 3) == {0, 1, 2}


@pytest.mark.slow
def test_every_meshnet_search_and_restart_cell_is_the_paper(project: Path) -> None:
    plan = make_plan(ROOT / "matrix" / "meshnet_asha.yaml", workdir=project)
    spec = plan.matrix.spec
    assert spec.search is not None and spec.pruner is not None and spec.restarts is not None
    assert spec.search.space == SPACE
    assert spec.search.seed == 42  # seed § Hyperparameter Search Code Structure: 'seed': 42
    assert (spec.search.metric, spec.search.mode) == ("val_dice", "max")  # minimise -Dice
    # seed § Search Space: fidelity [15, 50]; § Code Structure: num_rungs 4, num_brackets 1.
    asha = plan.search.asha
    assert (asha.min_epochs, asha.max_epochs, asha.brackets) == (15, 50, 1)
    assert asha.rungs() == [15, 22, 33]  # Oríon's 4 rungs: 15, 22, 33 and the end at 50
    assert spec.restarts.seeds == 10  # seed § MeshNet Training with Restarts
    trials = plan.cells  # a fresh ledger: the restarts come once the search has run
    assert len(trials) == 60
    assert drift(plan, trials, MESHNET) == []
    # seed § What the Paper Does: the search on the inner folds of the first outer fold only,
    assert _outer_folds(plan, trials, 3, 3) == {0}
    # then the chosen configuration on every outer fold, 10 seeds each.
    [study] = plan.search.studies
    restarts = plan.search.restart_cells(study, [trials[0]])
    assert len(restarts) == 3 * 10 and drift(plan, restarts, MESHNET) == []
    assert _outer_folds(plan, restarts, 3, 3) == {0, 1, 2}
    assert {c.values["seed"] for c in restarts} == set(range(1, 11))
    assert all("outer0" not in c.run_name.split("_") for c in restarts[10:])


def test_a_value_that_drifts_from_the_paper_is_named(project: Path) -> None:
    """The tables fail when a matrix leaves the paper: one value changed is one finding."""
    text = (ROOT / "matrix" / "isles24_ablation.yaml").read_text()
    drifted = project / "drifted.yaml"
    drifted.write_text(text.replace("optimizer.lr=1.0e-3", "optimizer.lr=3.0e-3"))
    plan = make_plan(drifted)
    found = drift(plan, plan.cells[:1], BASELINES)
    assert found == [
        f"segresnet_outer0: optimizer.lr=0.003, the paper's 0.001 ({SEED} Optimizer: AdamW, "
        "lr=0.001)"
    ]


def test_the_cpu_demo_composes_every_cell_with_the_papers_training(project: Path) -> None:
    plan = make_plan(ROOT / "matrix" / "demo_stroke_nested.yaml", workdir=project)
    demo = {  # the paper's (TRAINING) where the demo keeps it; the rest is sized for a CPU
        "optimizer.name": "adamw", "optimizer.eps": 1e-4, "scheduler.div_factor": 100.0,
        "loss.name": "ce_weighted", "loss.label_smoothing": 0.01, "augmentation.name": "none",
        "training.batch_size": 1, "training.samples_per_volume": 1, "training.val_interval": 1,
    }  # fmt: skip
    assert drift(plan, plan.cells, [(k, v, "demo") for k, v in demo.items()]) == []
    trials = plan.cells  # a fresh ledger: the restarts come once the search has run
    assert len(trials) == 6 and _outer_folds(plan, trials, 2, 2) == {0}
    assert plan.search.asha.rungs() == [2, 3]  # Oríon's 3 rungs over [2, 6]


# --- MeshNet's dilation schedule --------------------------------------------------------------

#: The paper's own code base: the Plis lab's MeshNet config for 256³ brains (the paper's
#: training repository is not public); github.com/neuroneural/catalyst_example, modelAE.json
#: ("Autoencoder-like architecture for 256^3 brains"), blob 77b9a5ee, unchanged from its first
#: commit 5bd27f9394d28cdf311b565ac451ff452e6d8ebc (2023-11-06) to 629cb45a43edad482551dd
#: 7015446c9089ad5e67 (2025-03-12); brainchop ships the same 9 dilations + 1x1 as
#: model5_gw_ae. The replication arc-meshchop reads the paper as [1,2,4,8,16,16,8,4,2]
#: (src/arc_meshchop/models/meshnet.py @ 9b40777): receptive field 123, same parameters.
LAB_DILATIONS = [1, 2, 4, 8, 16, 8, 4, 2, 1]
ARC_DILATIONS = [1, 2, 4, 8, 16, 16, 8, 4, 2]
#: The paper's parameter counts (abstract; MeshNet-21 is the search's widest): 1 input
#: channel, 2 classes.
PAPER_COUNTS = {5: 5_682, 16: 56_194, 21: 96_434, 26: 147_474}


def _meshnet(width: int, dilations: list[int] | None = None) -> torch.nn.Module:
    """MeshNet as the recipe builds it from its config (model=meshnet)."""
    from recipes.components.models.build import build_model
    from runner.recipe import Recipe

    overrides = ["model=meshnet", f"model.width={width}", "data.in_channels=1"]
    if dilations is not None:
        overrides.append(f"model.dilations=[{','.join(map(str, dilations))}]")
    cfg = Recipe.load("segmentation").compose(overrides)
    return build_model(cfg.model)


def _receptive_field(model: torch.nn.Module, length: int) -> int:
    """Measured: how many input voxels along one axis reach the centre output voxel (all
    weights positive, so no ReLU hides a path)."""
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.01)
    x = torch.ones(1, 1, 1, 1, length, requires_grad=True)
    model(x)[0, 1, 0, 0, length // 2].backward()
    return int((x.grad[0, 0, 0, 0] != 0).sum())


def test_meshnet_has_the_lab_codes_schedule_receptive_field_and_the_papers_counts() -> None:
    from recipes.components.models.nets.meshnet import DEFAULT_DILATIONS
    from recipes.components.models.sizes import PRESETS
    from runner.recipe import Recipe

    cfg = Recipe.load("segmentation").compose(["model=meshnet"])
    assert list(cfg.model.dilations) == LAB_DILATIONS and cfg.model.width == 26
    assert list(DEFAULT_DILATIONS) == LAB_DILATIONS
    assert PRESETS["meshnet"]["published"]["dilations"] == LAB_DILATIONS
    for width, count in PAPER_COUNTS.items():
        model = _meshnet(width)
        assert sum(p.numel() for p in model.parameters()) == count, width
    assert _receptive_field(_meshnet(5), 131) == 93 == 1 + 2 * sum(LAB_DILATIONS)
    # model.dilations is a key: the replication's reading, same parameters, receptive field 123
    arc = _meshnet(26, ARC_DILATIONS)
    assert sum(p.numel() for p in arc.parameters()) == PAPER_COUNTS[26]
    assert _receptive_field(_meshnet(5, ARC_DILATIONS), 161) == 123


# --- U-Mamba ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["axes", "base"])
def test_umamba_is_refused_at_plan_time_with_the_reason(project: Path, capsys, where) -> None:
    body = (
        "axes:\n  model: [segresnet, umamba]\n"
        if where == "axes"
        else "base: [data=demo, model=umamba]\naxes: {seed: [0]}\n"
    )
    head = "name: um\nrecipe: segmentation\n" + ("base: [data=demo]\n" if where == "axes" else "")
    (project / "um.yaml").write_text(head + body)
    assert main(["plan", "um.yaml"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    line = "um.yaml:5: axes.model[1]" if where == "axes" else "um.yaml:3: base[1]"
    assert f"{line}: model choice 'umamba' is refused: U-Mamba" in err
    assert "selective_scan_cuda" in err and "Traceback" not in err
    table = (ROOT / "README.md").read_text().split("**Model sizes.**", 1)[1].split("\n\n", 2)[1]
    assert "| umamba | not available" in table and "CUDA" in table
