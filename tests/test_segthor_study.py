"""The SegTHOR group's Novograd study (seed 004) as they run it: the study matrix composed
cell by cell against the seed, layer-wise learning rates graded by depth, the slice-folder
converter, Welch's test against a per-class CSV, and the CPU demo reduced to two cells that
train, log their gradient norms and per-group learning rates, and end in the comparison."""

from __future__ import annotations

import csv
import json
import math
import pickle
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from recipes.components.data.layouts import read_dataset
from recipes.components.data.segthor_demo_data import make_patient, write_slices
from recipes.components.data.slice_folders import SliceDatasetError, convert
from recipes.components.data.slice_folders import main as convert_main
from recipes.components.models.build import build_model
from recipes.components.models.layerwise import layerwise_param_groups, param_roles
from recipes.components.models.sizes import effective_model_config
from recipes.components.training.loop import EpochState
from recipes.components.training.step_metrics import StepMetrics, grad_norm
from runner.matrix.cells import Cell
from runner.matrix.load import load_matrix
from runner.plan import make_plan
from runner.report import significance
from runner.report.baseline import CsvBaseline, csv_baseline, per_class_rows, read_csv
from runner.report.stats import CellResult, Group

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(sys.executable).parent / "runner"
SEED = "/work/shared/seeds/004 (Novograd Optimizer - Advanced MONAI Implementation)"
GRADED = {"early_encoder": [0.1, 0.5], "deep_encoder": [0.7, 1.0], "bottleneck": 1.0}
GRADED |= {"decoder": 1.5, "head": 2.0}

# Every value seed 004 states, where the composed config holds it. {SEED} section: quote.
NOVOGRAD = {
    "optimizer.name": "novograd",  # title: "Novograd Optimizer"
    "optimizer.lr": 0.002,  # 4: "base_lr=0.002"
    "optimizer.betas": [0.95, 0.98],  # 4: "betas=(0.95, 0.98)"
    "optimizer.weight_decay": 5e-4,  # 4: "weight_decay=0.0005"
    "optimizer.grad_averaging": True,  # 4: "grad_averaging=True"
    "optimizer.layerwise": GRADED,  # 1: early 0.1-0.5x, deep 0.7-1.0x, middle 1.0x, ...
    "scheduler.name": "warmup_cosine",  # 3: "Enhanced WarmupCosineSchedule"
    "scheduler.warmup_fraction": 0.15,  # 3: "15% warmup for Novograd"
    "scheduler.warmup_multiplier": 0.1,  # 3: "warmup_multiplier=0.1"
    "training.grad_clip_norm": 1.0,  # 5: "--grad_clip 1.0"
    "training.find_lr": True,  # 2: "--find_lr"
    "training.lr_finder.start_lr": 0.002,  # 2: "from initial LR to 10x"
    "training.lr_finder.end_lr": 0.02,
    "training.max_epochs": 25,  # Manual Training: "--epochs 25"
}
OTHERS = {
    "scheduler.name": "warmup_cosine",  # 3: the same schedule ...
    "scheduler.warmup_fraction": 0.1,  # 3: "(vs 10% for others)"
    "scheduler.warmup_multiplier": 0.1,
    "training.max_epochs": 25,
}
BATCH = 8  # 5: "Small batch sizes (B=8)": slices per optimizer step
SEED_42 = 42  # Single Seed: "SEED=42"
BASELINE_CSV = "baseline_per_class_stats.csv"  # Comparison Commands: --baseline_file


def _get(cfg: object, dotted: str) -> object:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, dotted)  # type: ignore[arg-type]
    if dotted == "optimizer.layerwise" and isinstance(value, str):
        return yaml.safe_load(value)
    return OmegaConf.to_container(value) if hasattr(value, "_metadata") else value


def test_every_cell_of_the_study_carries_the_seeds_values() -> None:
    plan = make_plan(REPO / "matrix" / "segthor_novograd.yaml")
    seeds: dict[str, set[int]] = {}
    for cell in plan.cells:
        cfg = plan.recipe.compose([*plan.matrix.spec.base, *cell.overrides])
        name = str(cfg.optimizer.name)
        expected = NOVOGRAD if name == "novograd" else OTHERS
        for key, value in expected.items():
            got = _get(cfg, key)
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (
                f"{cell.run_name}: {key} = {got!r}, the seed says {value!r}"
            )
        if name != "novograd":  # the seed gives the extras for the Novograd jobs only
            assert not cfg.training.find_lr and cfg.training.grad_clip_norm is None
        assert cfg.training.batch_size * cfg.training.samples_per_volume == BATCH
        assert cfg.dims.spatial_dims == 2 and cfg.data.name == "segthor"
        assert cfg.data.format == "datalist"  # their train/val split, from the converter
        seeds.setdefault(name, set()).add(int(cfg.seed))
    assert set(seeds) == {"novograd", "adamw", "adam", "sgd"}
    assert all(SEED_42 in s and len(s) == 3 for s in seeds.values()), seeds
    report = plan.matrix.spec.report
    assert report.baseline_csv is not None and report.baseline_csv.endswith(BASELINE_CSV)
    # Their summary script: np.std (ddof 0) over its 3 default seeds.
    assert (report.baseline_n, report.baseline_std_ddof) == (3, 0)


def test_the_demo_composes_the_studys_novograd_settings() -> None:
    demo = make_plan(REPO / "matrix" / "demo_segthor.yaml")
    novograd = [c for c in demo.cells if c.values["optimizer"] == "novograd"]
    assert len(demo.cells) == 4 and len(novograd) == 2
    for cell in demo.cells:
        cfg = demo.recipe.compose([*demo.matrix.spec.base, *cell.overrides])
        if cfg.optimizer.name == "novograd":
            for key, value in NOVOGRAD.items():
                if key != "training.max_epochs":  # the demo's 3 epochs
                    got = _get(cfg, key)
                    assert got == pytest.approx(value) if isinstance(value, float) else got == value
        assert cfg.data.name == "segthor_demo" and cfg.model.size == "tiny"
    assert (REPO / str(demo.matrix.spec.report.baseline_csv)).is_file()


def test_a_key_beside_a_yaml_merge_overrides_it_and_written_twice_is_an_error(
    write_matrix,  # type: ignore[no-untyped-def]
) -> None:
    text = (
        "name: m\nrecipe: segmentation\ninclude:\n  - &a {optimizer: sgd, seed: 1}\n"
        "  - {<<: *a, seed: 2}\n"
    )
    spec = load_matrix(write_matrix(text)).spec
    assert spec.include == [{"optimizer": "sgd", "seed": 1}, {"optimizer": "sgd", "seed": 2}]
    from runner.errors import MatrixError

    with pytest.raises(MatrixError, match="duplicate key"):
        load_matrix(write_matrix(text.replace("seed: 2}", "seed: 2, seed: 3}")))


def _dynunet_2d() -> torch.nn.Module:
    from runner.recipe import Recipe

    cfg = Recipe.load("segmentation").compose(
        ["dims=2d", "model=dynunet", "model.size=tiny", "training.patch_size=[48,48]"]
    )
    return build_model(effective_model_config(cfg.model))


def test_a_role_given_a_range_is_graded_by_depth_one_group_per_layer() -> None:
    model = _dynunet_2d()
    groups = layerwise_param_groups(model, "dynunet", 0.002, GRADED)
    by_role: dict[str, list[dict]] = {}
    for g in groups:
        by_role.setdefault(g["role"], []).append(g)
    for role, (first, last) in (("early_encoder", (0.1, 0.5)), ("deep_encoder", (0.7, 1.0))):
        scales = [g["lr_scale"] for g in by_role[role]]
        assert len(scales) >= 2 and scales[0] == first and scales[-1] == pytest.approx(last)
        steps = np.diff(scales)
        assert np.allclose(steps, steps[0]) and steps[0] > 0  # evenly spaced, shallow to deep
        assert [g["name"] for g in by_role[role]] == [f"{role}.{k}" for k in range(len(scales))]
        # the layers in the network's order: a group's parameters come before the next's
        order = {id(p): i for i, p in enumerate(model.parameters())}
        firsts = [min(order[id(p)] for p in g["params"]) for g in by_role[role]]
        assert firsts == sorted(firsts)
    for role, scale in (("bottleneck", 1.0), ("decoder", 1.5), ("head", 2.0)):
        [g] = by_role[role]
        assert g["name"] == role and g["lr"] == pytest.approx(0.002 * scale)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert set(param_roles(model, "dynunet").values()) == set(by_role)
    for bad in ({"head": [1.0, 2.0, 3.0]}, {"head": -1.0}, {"head": [0.5, "x"]}):
        with pytest.raises(ValueError, match=r"optimizer\.layerwise\.head"):
            layerwise_param_groups(model, "dynunet", 0.002, bad)


def test_the_epochs_gradient_figures_survive_a_step_checkpoint() -> None:
    state = EpochState(3, batches=4, grad_steps=4, grad_norm_sum=5.5, grad_norm_max=2.0)
    state.grad_clipped = 2
    assert EpochState.from_dict(state.as_dict()) == state
    assert EpochState.from_dict({"epoch": 1}).grad_steps == 0  # a checkpoint from before


def test_step_metrics_count_clipping_and_log_every_groups_lr() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.2, "name": "early_encoder", "lr_scale": 0.1},
            {"params": model[1].parameters(), "lr": 4.0, "name": "head", "lr_scale": 2.0},
        ],
        lr=2.0,
    )
    watch = StepMetrics(optimizer, clip=1.0, every=2)
    state = EpochState(1)
    watch.begin(state)
    norms = []
    for step, scale in enumerate((0.1, 10.0, 0.2, 50.0), start=1):
        model.zero_grad()
        (scale * model(torch.ones(2, 3)).sum()).backward()
        expected = float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
        norm = grad_norm(model.parameters(), watch.clip)
        assert norm == pytest.approx(expected, rel=1e-5)  # before clipping
        after = float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
        assert after == pytest.approx(min(expected, 1.0), rel=1e-5)  # and it clipped
        watch.record(step, norm, optimizer)
        norms.append(norm)
    assert watch.base_lr(optimizer) == 2.0  # not group 0's 0.2
    figures = watch.epoch_metrics()
    assert 0 < figures["grad_clipped_steps"] == sum(n > 1.0 for n in norms) < len(norms)
    assert figures["grad_norm_max"] == max(norms)
    assert figures["grad_norm_mean"] == pytest.approx(statistics.fmean(norms))
    assert sorted({(k, step) for k, _, step in watch.rows}) == [
        (k, step) for k in ("grad_norm", "lr/early_encoder", "lr/head") for step in (2, 4)
    ]
    with pytest.raises(ValueError, match=r"training\.step_metrics_every"):
        StepMetrics(optimizer, None, "often")  # type: ignore[arg-type]


def test_the_baseline_csv_comes_from_the_command_line_else_the_matrix() -> None:
    plan = make_plan(REPO / "matrix" / "demo_segthor.yaml")
    assert csv_baseline(plan, None, None, None, None) == CsvBaseline(
        plan.workdir / "matrix" / "demo_segthor_baseline.csv", 3, 0
    )
    assert csv_baseline(plan, "x.csv", 5, 1, None) == CsvBaseline(Path("x.csv"), 5, 1)
    assert csv_baseline(plan, None, None, None, "adamw") is None  # a group baseline asked


# --- the converter ----------------------------------------------------------------------


def _course_slices(root: Path, patients: int = 4, val: int = 1) -> Path:
    write_slices(root, patients=patients, val=val, size=24, depth=5)
    return root


def test_slices_become_volumes_the_recipe_reads_with_their_split(tmp_path: Path) -> None:
    src = _course_slices(tmp_path / "SEGTHOR_CLEAN")
    # a course test/ folder: images only
    (src / "test" / "img").mkdir(parents=True)
    for z in range(3):
        Image.fromarray(np.full((24, 24), z * 10, np.uint8)).save(
            src / "test" / "img" / f"Patient_41_{z:04d}.png"
        )
    dest = tmp_path / "segthor"
    report = convert(src, dest)
    image, label = make_patient(0, 0, 24, 5)  # Patient_01, as write_slices drew it
    vol = nib.load(dest / "imagesTr" / "Patient_01_0000.nii.gz")
    seg = nib.load(dest / "labelsTr" / "Patient_01.nii.gz")
    assert np.array_equal(np.asarray(vol.dataobj), image)  # rows, columns, z as sliced
    assert np.array_equal(np.asarray(seg.dataobj), label)  # 0, 63, ... back to 0..4
    # spacing.pkl's 0.9 mm at 512 px, resized to 24 px: 19.2 mm in-plane; z as given
    assert vol.header.get_zooms() == pytest.approx((0.9 * 512 / 24, 0.9 * 512 / 24, 2.5))
    assert report["cases"]["Patient_01"]["label_scale"] == 63
    assert (dest / "imagesTs" / "Patient_41_0000.nii.gz").exists()
    assert not (dest / "labelsTr" / "Patient_41.nii.gz").exists()

    items, info = read_dataset(dest, "auto")  # data=segthor, its own random split
    assert info.layout == "nnunet" and len(items) == 4 and info.class_names[2] == "heart"
    items, info = read_dataset(
        dest,
        "datalist",
        datalist=dest / "datalist.json",
        channel_names=["CT"],
        class_names=info.class_names,
    )
    val = [i["case"] for i in items if i.get("subset") == "validation"]
    assert val == ["Patient_04"]  # the course's val/ folder validates
    assert len(items) == 4


def test_numpy_slices_and_plain_label_values_convert_too(tmp_path: Path) -> None:
    src = tmp_path / "slices"
    for sub in ("img", "gt"):
        (src / "train" / sub).mkdir(parents=True)
    label = np.zeros((8, 8, 3), np.uint8)
    label[2:5, 2:5, 1] = 4
    for z in range(3):
        np.save(src / "train" / "img" / f"p1_{z}.npy", np.full((8, 8), z, np.float32))
        np.save(src / "train" / "gt" / f"p1_{z}.npy", label[..., z])
    convert(src, tmp_path / "out", spacing=[0.5, 0.5, 3.0])
    seg = nib.load(tmp_path / "out" / "labelsTr" / "p1.nii.gz")
    assert np.array_equal(np.asarray(seg.dataobj), label)  # already 0..4: kept
    assert seg.header.get_zooms() == (0.5, 0.5, 3.0)
    assert "validation" not in json.loads((tmp_path / "out" / "datalist.json").read_text())


def test_the_converter_names_what_is_wrong_and_writes_nothing_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _course_slices(tmp_path / "src", patients=2, val=0)
    gt = src / "train" / "gt"
    (gt / "Patient_02_0003.png").unlink()
    with pytest.raises(SliceDatasetError, match="Patient_02 has 4 label slices for 5 image"):
        convert(src, tmp_path / "a")
    shutil.rmtree(src)
    src = _course_slices(tmp_path / "src", patients=2, val=0)
    for name in ("img", "gt"):
        (src / "train" / name / "Patient_01_0002.png").unlink()
    with pytest.raises(SliceDatasetError, match="Patient_01 lacks slices 2 between 0 and 4"):
        convert(src, tmp_path / "b")
    shutil.rmtree(src)
    src = _course_slices(tmp_path / "src", patients=1, val=0)
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(
        src / "train" / "gt" / "Patient_01_0000.png"
    )
    with pytest.raises(SliceDatasetError, match=r"label values \[0, 7, 63"):
        convert(src, tmp_path / "c")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert convert_main([str(src), str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    evil = src / "spacing.pkl"
    evil.write_bytes(pickle.dumps({"Patient_01": (1, 1, 1), "x": Path("/")}))
    with pytest.raises(SliceDatasetError, match=r"spacing\.pkl may not build"):
        convert(src, tmp_path / "d")


# --- Welch's test against a per-class CSV -----------------------------------------------


def test_welch_from_summary_statistics_is_welchs_test_on_the_samples() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.05, 3), rng.normal(0.7, 0.1, 5)
    ref = stats.ttest_ind(a, b, equal_var=False)
    got = significance.welch(a.mean(), a.std(ddof=1), 3, b.mean(), b.std(ddof=1), 5)
    assert (got.t, got.p) == pytest.approx((ref.statistic, ref.pvalue))
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 5
    assert got.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 4))


def _group(label: str, values: list[float]) -> Group:
    group = Group(label, {"optimizer": label})
    for i, v in enumerate(values):
        cell = Cell(f"{label}{i}", {"optimizer": label, "seed": i}, ())
        group.cells.append(CellResult(cell, f"r{i}", v, 1, {"heart": v, "aorta": v / 2}, []))
    return group


def test_a_csv_with_n_gets_welch_per_class_and_one_without_says_why_not(tmp_path: Path) -> None:
    path = tmp_path / BASELINE_CSV  # the group's columns: no n, np.std
    path.write_text(
        "class,dice_mean,dice_std,hd95_mean,hd95_std\n0,0.99,0.001,1,0\n2,0.8,0.02,5,1\n"
        "4,0.5,0.04,9,2\n"
    )
    order = ["background", "esophagus", "heart", "trachea", "aorta"]
    classes = ["heart", "aorta"]
    bare = read_csv(path, classes, order)
    assert bare["heart"] == {"mean": 0.8, "std": 0.02, "n": None}
    groups = [_group("novograd", [0.85, 0.9, 0.88]), _group("adamw", [0.81, 0.79, 0.8])]
    rows = per_class_rows(groups, classes, [], None, bare)
    assert all(r["test"] is None and "no n" in r["no_test"] for r in rows)

    table = read_csv(path, classes, order, n=3, ddof=0)
    assert table["heart"]["std"] == pytest.approx(0.02 * math.sqrt(3 / 2))  # to ddof 1
    rows = per_class_rows(groups, classes, [], None, table)
    for r in rows:
        values = [
            c.per_class[r["class"]] for c in next(g for g in groups if g.label == r["group"]).cells
        ]
        ref = stats.ttest_ind_from_stats(
            statistics.fmean(values),
            statistics.stdev(values),
            3,
            table[r["class"]]["mean"],
            table[r["class"]]["std"],
            3,
            equal_var=False,
        )
        assert r["test"] == "welch" and r["p"] == pytest.approx(ref.pvalue)
    heart = [r for r in rows if r["class"] == "heart"]
    assert [r["p_holm"] for r in heart] == pytest.approx(significance.holm([r["p"] for r in heart]))
    assert all(r["holds"] == (r["p_holm"] < 0.05) for r in rows)


def test_the_html_report_names_the_test_of_each_per_class_row() -> None:
    from types import SimpleNamespace

    from runner.report import html

    row = {"group": "novograd", "class": "heart", "mean": 0.8, "std": 0.1, "n": 3}
    row |= {"baseline_mean": 0.7, "baseline_std": 0.05, "delta": 0.1}
    welch = {**row, "test": "welch", "p": 0.04, "p_holm": 0.08}
    untested = {**row, "class": "aorta", "test": None, "no_test": "the CSV gives no n"}
    group = {"group": "novograd", "dice_heart_mean": 0.8, "dice_heart_std": 0.1}
    report = SimpleNamespace(classes=["heart"], groups=[group], per_class=[welch, untested])
    page = html._per_class(report)
    assert "<th>test</th>" in page
    assert "Welch (CSV mean, std, n)" in page and "0.080" in page
    assert page.count("<td>none</td>") == 1  # the row without n


# --- the demo, reduced ------------------------------------------------------------------


def _cli(project: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER), *args], cwd=project, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_demo_trains_logs_gradients_and_lrs_and_ends_in_the_per_class_comparison(
    tmp_path: Path,
) -> None:
    matrix = yaml.safe_load((REPO / "matrix" / "demo_segthor.yaml").read_text())
    # The demo's two Novograd cells (n = 2 seeds: Welch needs 2), 2 epochs.
    matrix["axes"] = {}
    matrix["base"] = [*matrix["base"], "training.max_epochs=2", "training.num_threads=1"]
    (tmp_path / "matrix").mkdir()
    (tmp_path / "matrix" / "demo_segthor.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    shutil.copy(REPO / "matrix" / "demo_segthor_baseline.csv", tmp_path / "matrix")
    (tmp_path / "pyproject.toml").write_text("")

    sweep = _cli(tmp_path, "sweep", "matrix/demo_segthor.yaml")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert (tmp_path / "data" / "segthor_demo_slices" / "val" / "gt").is_dir()  # as the course
    assert json.loads((tmp_path / "data" / "segthor_demo" / "datalist.json").read_text())[
        "validation"
    ]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo_segthor").experiment_id])
    assert len(runs) == 2
    for run in runs:
        rid, metrics = run.info.run_id, run.data.metrics
        norms = client.get_metric_history(rid, "grad_norm")
        steps = sorted(m.step for m in norms)
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4  # every step, once
        groups = {k.removeprefix("lr/") for k in metrics if k.startswith("lr/")}
        assert {"early_encoder.0", "deep_encoder.0", "bottleneck", "decoder", "head"} <= groups
        at = {
            k: {m.step: m.value for m in client.get_metric_history(rid, f"lr/{k}")} for k in groups
        }
        for step in steps:  # every group's lr each step, at its multiplier of the base lr
            assert at["decoder"][step] == pytest.approx(1.5 * at["bottleneck"][step])
            assert at["head"][step] == pytest.approx(2.0 * at["bottleneck"][step])
            assert at["early_encoder.0"][step] == pytest.approx(0.1 * at["bottleneck"][step])
        # `lr` is the schedule's base lr (multiplier 1: the bottleneck's), not group 0's
        last_of_epoch_1 = max(s for s in steps if s <= len(steps) // 2)
        [lr1] = [m.value for m in client.get_metric_history(rid, "lr") if m.step == 1]
        assert lr1 == pytest.approx(at["bottleneck"][last_of_epoch_1])
        # clipping fired exactly where the logged norm (before clipping) exceeded 1.0
        per_epoch = {m.step: m.value for m in client.get_metric_history(rid, "grad_clipped_steps")}
        by_step = {m.step: m.value for m in norms}
        first_half = [by_step[s] for s in steps if s <= last_of_epoch_1]
        assert per_epoch[1] == sum(v > 1.0 for v in first_half)
        assert metrics["grad_norm_max"] == pytest.approx(
            max(v for s, v in by_step.items() if s > last_of_epoch_1)
        )

    out = tmp_path / "report"
    report = _cli(tmp_path, "report", "matrix/demo_segthor.yaml", "--no-mlflow", "-o", str(out))
    assert report.returncode == 0, report.stderr
    # the table's title says which test (rich wraps it at the terminal's width)
    assert "Welch's t-test from summary statistics" in " ".join(report.stdout.split())
    rows = list(csv.DictReader((out / "per_class_vs_baseline.csv").open()))
    assert {r["class"] for r in rows} == {"esophagus", "heart", "trachea", "aorta"}
    base = {
        r["class"]: r
        for r in csv.DictReader((REPO / "matrix" / "demo_segthor_baseline.csv").open())
    }
    order = ["background", "esophagus", "heart", "trachea", "aorta"]
    # independently: each run's per-class Dice at its best epoch, Welch against the CSV row
    per_class: dict[str, list[float]] = {c: [] for c in order[1:]}
    for run in runs:
        dice = client.get_metric_history(run.info.run_id, "val_dice")
        best = max(dice, key=lambda m: (m.value, -m.step)).step
        for c in per_class:
            hist = client.get_metric_history(run.info.run_id, f"val_dice_{c}")
            per_class[c].append(next(m.value for m in hist if m.step == best))
    for r in rows:
        c = r["class"]
        row = base[str(order.index(c))]
        std = float(row["dice_std"]) * math.sqrt(3 / 2)  # np.std over 3 seeds -> ddof 1
        ref = stats.ttest_ind_from_stats(
            statistics.fmean(per_class[c]),
            statistics.stdev(per_class[c]),
            2,
            float(row["dice_mean"]),
            std,
            3,
            equal_var=False,
        )
        if math.isnan(ref.pvalue):  # both sides without spread
            continue
        assert r["test"] == "welch" and float(r["p"]) == pytest.approx(ref.pvalue, rel=1e-6)
        assert float(r["delta"]) == pytest.approx(
            statistics.fmean(per_class[c]) - float(row["dice_mean"])
        )
