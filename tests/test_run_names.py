"""Run names: the ``run_name`` template, labelled and derived labels for dict values, the
ids they must not change, base typos reported like axis typos, and the validation record."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from runner.cli import main
from runner.errors import MatrixError
from runner.matrix import cache
from runner.matrix.load import load_matrix
from runner.matrix.validate import validate_matrix
from runner.plan import make_plan
from runner.recipe import Recipe
from tests.conftest import ROOT

DIFFUSION = """
name: tmpl
recipe: diffusion
base: [data=demo, training=bf16]
run_name: "{model}_b{training.batch_size}_{training.amp}_{optimizer}{optimizer.lr}_\\
  {scheduler}_{loss}_s{seed}"
axes:
  model: [medsegdiff_16c, medsegdiff_32c_full]
  optimizer.lr: [1.0e-4, 5.0e-5]
  seed: [0, 1]
include:
  - {model: concat_unet, training.batch_size: 2, seed: 0}
"""


def _names(path: Path) -> list[str]:
    return [c.run_name for c in validate_matrix(load_matrix(path))[1].cells]


def test_template_fills_axis_include_base_and_config_values(write_matrix) -> None:
    names = _names(write_matrix(DIFFUSION))
    # lr shortest (1e-4, not 0.0001), amp from training=bf16 in base, optimizer and scheduler
    # the default choices, batch size the config's default where the cell does not set it.
    assert names[0] == "medsegdiff_16c_b4_bf16_adamw1e-4_constant_mse_s0"
    assert "medsegdiff_32c_full_b4_bf16_adamw5e-5_constant_mse_s1" in names
    assert names[-1] == "concat_unet_b2_bf16_adamw1e-4_constant_mse_s0"


def test_template_format_spec(write_matrix) -> None:
    names = _names(write_matrix(DIFFUSION.replace("{optimizer.lr}", "{optimizer.lr:.0e}")))
    assert names[0] == "medsegdiff_16c_b4_bf16_adamw1e-04_constant_mse_s0"


def test_word_specs_reach_the_medsegdiff_groups_spellings(write_matrix) -> None:
    """The seed's tokens (002, Run Name Convention): adamw1e4_wd00, s500K, ampBF16, dw10, d01,
    w10K; a step count that is not whole thousands stays as it is."""
    template = (
        "{model}_amp{training.amp:upper}_{optimizer}{optimizer.lr:exp}"
        "_wd{optimizer.weight_decay:*100:02d}_s{training.max_steps:K}_dw{loss.diffusion_weight:*10:02d}"
        "_d{loss.dice_weight:*10:02d}_w{loss.aux_warmup_steps:K}_{loss:upper}_s{seed}"
    )
    text = f"""
    name: words
    recipe: diffusion
    base: [data=demo, training=bf16, loss=mse_aux_light]
    run_name: "{template}"
    axes:
      optimizer.lr: [1.0e-4, 5.0e-5, 2.5e-4]
      training.max_steps: [500000, 1500]
      seed: [0]
    """
    names = _names(write_matrix(text))
    assert names[0] == ("medsegdiff_16c_ampBF16_adamw1e4_wd00_s500K_dw10_d01_w10K_MSE_AUX_LIGHT_s0")
    assert names[1] == "medsegdiff_16c_ampBF16_adamw1e4_wd00_s1500_dw10_d01_w10K_MSE_AUX_LIGHT_s0"
    assert names[2].startswith("medsegdiff_16c_ampBF16_adamw5e5_")
    assert names[4].startswith("medsegdiff_16c_ampBF16_adamw2.5e4_")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("{training.amp}", "{training.ampp}"),
            [
                "matrix.yaml:4: run_name: unknown placeholder {training.ampp}",
                "(model, optimizer.lr, seed, training.batch_size)",
                "did you mean 'training.amp'?",
            ],
        ),
        (
            ("_s{seed}", ""),
            ["run_name: the template gives 8 cells names that are not unique", "{seed}"],
        ),
        (("{loss}", "{loss!r}"), ["no !conversion"]),
        (("{loss}", "{loss"), ["invalid run_name template"]),
        (("_{loss}", "/{loss}"), ["letters, digits and _ . + - = only; got '/'"]),
        (("{optimizer.lr}", "{model:.2e}"), ["format spec '.2e' needs a number"]),
        (("{optimizer.lr}", "{model:exp}"), ["format spec 'exp' needs a number"]),
        (("{optimizer.lr}", "{optimizer.lr:K}"), ["format spec 'K' needs a whole number"]),
        (("{optimizer.lr}", "{optimizer.lr:big}"), ["'*100:02d'), or one of exp, K, upper"]),
        (("_s{seed}", "_s{seed}_{started:x}"), ["{started} takes no format spec"]),
        (("_s{seed}", "_{started}"), ["names that are not unique", "{seed}"]),
    ],
)
def test_template_problems(
    write_matrix, project: Path, capsys, change: tuple[str, str], expected: list[str]
) -> None:
    path = write_matrix(DIFFUSION.replace(*change))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    for needle in expected:
        assert needle in err, f"{needle!r} not in:\n{err}"
    assert "Traceback" not in err


def test_labelled_axis_names_runs_and_keeps_ids(write_matrix) -> None:
    """An axis written as {label: value}: the label names the run, the value makes the id,
    so the cells are those of the same axis written as a list."""
    value = "{early_encoder: 0.3, deep_encoder: 1.0, bottleneck: 1.0, decoder: 1.5, head: 2.0}"
    listed = f"""
    name: m
    recipe: segmentation
    base: [data=demo]
    axes:
      optimizer: [sgd, adamw]
      optimizer.layerwise: [null, "{value}"]
    """
    labelled = listed.replace(
        f'[null, "{value}"]', f'\n        uniform: null\n        layerwise: "{value}"'
    )
    plain = validate_matrix(load_matrix(write_matrix(listed, "a.yaml")))[1].cells
    named = validate_matrix(load_matrix(write_matrix(labelled, "b.yaml")))[1].cells
    assert [c.id for c in named] == [c.id for c in plain]
    assert [c.run_name for c in named] == [
        "sgd_uniform",
        "sgd_layerwise",
        "adamw_uniform",
        "adamw_layerwise",
    ]
    # Without labels: a derived label (never Python's None, never the whole dict).
    assert plain[0].run_name == "sgdlayerwisenone"
    assert plain[1].run_name.startswith("sgd_layerwise-") and len(plain[1].run_name) == 20


def test_bad_label(write_matrix, project: Path, capsys) -> None:
    path = write_matrix(
        "name: m\nrecipe: segmentation\naxes:\n  optimizer.layerwise:\n    one_group: null\n"
    )
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "matrix.yaml:5: axes.optimizer.layerwise.one_group: invalid label 'one_group'" in err


def test_ids_of_the_shipped_matrices_do_not_change() -> None:
    """Labels and templates name cells; ids come from values only. The ids of the two
    matrices that use them, pinned before they did."""
    pinned = {
        "segthor_optimizers.yaml": ["4988f82892c5", "f1ce786d504d", "dd1102251381"],
        # re-pinned when the study moved to training.batch_slices and the group's DDIM
        # timesteps (values changed, so ids did); its scheduler labels do not change them
        "isles24_medsegdiff.yaml": ["9e76779ec8ae", "a4a82b339c6b", "d7820ef24504"],
    }
    for name, ids in pinned.items():
        cells = validate_matrix(load_matrix(ROOT / "matrix" / name))[1].cells
        assert [c.id for c in cells[:3]] == ids, name
    segthor = validate_matrix(load_matrix(ROOT / "matrix" / "segthor_optimizers.yaml"))[1]
    assert segthor.cells[2].run_name == "sgd_poly_layerwise_s0"
    msd = validate_matrix(load_matrix(ROOT / "matrix" / "isles24_medsegdiff.yaml"))[1]
    assert msd.cells[0].run_name == (
        "medsegdiff_16c_b32_ampBF16_adamw1e4_wd00_const_s500K_lMSE_dw10_d00_b00_w0_augAGG2D"
        "_ddim_ds1000_nzcosine_tr50_seed0_{started}"
    )


BASE_TYPOS = """
name: typo
recipe: segmentation
base:
  - data=demo
  - training.max_epoch=3
  - training.val_intervall=2
  - optimizer.momentum=0.9
  - training.max_epochs=abc
  - +training.amp=bf16
  - trainingx.nothing_close=1
axes:
  optimizer: [sgd, adamw]
  optimizer.lrr: [1e-3]
"""


def test_base_typos_are_all_reported_like_axis_typos(write_matrix, project: Path, capsys) -> None:
    assert main(["plan", str(write_matrix(BASE_TYPOS))]) == 2
    err = capsys.readouterr().err
    expected = [
        "matrix.yaml:5: base[1]: 'training.max_epoch' is not a key of the recipe's config "
        "(did you mean 'training.max_epochs'?)",
        "matrix.yaml:6: base[2]: 'training.val_intervall' is not a key",
        "matrix.yaml:7: base[3]: 'optimizer.momentum' is not in the config composed for "
        "optimizer=adamw (it exists for optimizer=sgd)",
        "matrix.yaml:8: base[4]: expected an integer (like 10), got str 'abc'",
        "matrix.yaml:9: base[5]: 'training.amp' is already in the recipe's config",
        "matrix.yaml:10: base[6]: 'trainingx.nothing_close' is not a key of the recipe's config"
        "; a key the config does not have is added with '+KEY=VALUE'",
        # the axes are checked in the same run
        "axes.optimizer.lrr: 'optimizer.lrr' is not a key of the recipe's config",
    ]
    for needle in expected:
        assert needle in err, f"{needle!r} not in:\n{err}"
    assert "+training.max_epoch" not in err and "\\n" not in err
    assert "Traceback" not in err


def test_a_base_key_of_a_chosen_group_is_fine_where_the_cells_have_it(write_matrix) -> None:
    path = write_matrix(
        "name: m\nrecipe: segmentation\nbase: [data=demo, optimizer.momentum=0.8]\n"
        "axes:\n  optimizer: [sgd]\n  seed: [0, 1]\n"
    )
    assert len(_names(path)) == 2


def test_validation_is_remembered_where_the_sweep_ran(write_matrix, project: Path) -> None:
    path = write_matrix(DIFFUSION)
    first = make_plan(path)
    root = first.ledger.root
    assert not root.exists()  # plan on a matrix that never ran writes nothing
    root.mkdir(parents=True)  # what a sweep leaves
    second = make_plan(path)
    record = json.loads((root / cache.FILE).read_text())
    assert record["names"] == {c.id: c.run_name for c in second.cells}
    # The record is used: a forged name shows that no composition ran.
    forged = {**record, "names": {**record["names"], first.cells[0].id: "from_the_record"}}
    (root / cache.FILE).write_text(json.dumps(forged))
    assert make_plan(path).cells[0].run_name == "from_the_record"


def test_a_changed_recipe_config_invalidates_the_record(
    write_matrix, project: Path, tmp_path: Path
) -> None:
    path = write_matrix(DIFFUSION)
    m = load_matrix(path)
    shipped = Recipe.load("diffusion")
    ids = [c.id for c in validate_matrix(m)[1].cells]
    # A copy of the recipe's config, so that the repository's files stay as they are.
    conf = tmp_path / "conf"
    shutil.copytree(shipped.config_dir, conf)
    recipe = dataclasses.replace(shipped, config_dir=conf)
    before = cache.fingerprint(m, recipe, ids)
    assert before == cache.fingerprint(m, dataclasses.replace(shipped, config_dir=conf), ids)
    bf16 = conf / "training" / "bf16.yaml"
    bf16.write_text(bf16.read_text().replace("amp: bf16", "amp: fp16"))
    assert cache.fingerprint(m, dataclasses.replace(recipe), ids) != before
    bf16.write_text(bf16.read_text().replace("fp16", "bf16"))  # restored: the same again
    assert cache.fingerprint(m, dataclasses.replace(recipe), ids) == before
    # The groups found through the search path (data is the segmentation recipe's) count.
    assert Recipe.load("segmentation").config_dir in recipe.search_dirs
    other = load_matrix(write_matrix(DIFFUSION.replace("seed: [0, 1]", "seed: [0, 2]"), "b.yaml"))
    other_ids = [c.id for c in validate_matrix(other)[1].cells]
    assert cache.fingerprint(other, recipe, other_ids) != before


def test_a_stale_record_is_not_trusted(write_matrix, project: Path) -> None:
    path = write_matrix(DIFFUSION)
    root = make_plan(path).ledger.root
    root.mkdir(parents=True)
    (root / cache.FILE).write_text(json.dumps({"fingerprint": "old", "names": {}}))
    broken = write_matrix(DIFFUSION.replace("{loss}", "{los}"))
    with pytest.raises(MatrixError, match="unknown placeholder"):
        make_plan(broken)


def test_started_is_set_once_at_the_first_start_and_kept_across_resumes(
    write_matrix, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``{started}``: plan shows the placeholder; the job fills it from its clock when it
    creates the cell's MLflow run, the ledger records that name once, and a later start (a
    resume, a requeue, a job that died right after creating the run) keeps the run and
    its name, whatever the clock says then; the plan shows the recorded name."""
    from mlflow import MlflowClient

    from runner import tracking
    from runner.job.cell import CellJob
    from runner.ledger import CellRecord

    path = write_matrix(DIFFUSION.replace("_s{seed}", "_s{seed}_{started}"))
    plan = make_plan(path)
    cell = plan.cells[0]
    assert cell.run_name == "medsegdiff_16c_b4_bf16_adamw1e-4_constant_mse_s0_{started}"
    uri = f"sqlite:///{project / 'mlruns.db'}"
    experiment = MlflowClient(uri).create_experiment("tmpl")
    from runner.matrix.names import fill_started

    clock = iter([1_765_722_600.0, 1_765_722_600.0 + 86_400])  # first start, a day later
    monkeypatch.setattr(
        "runner.job.cell.fill_started", lambda name, _now: fill_started(name, next(clock))
    )

    for c in plan.cells[:2]:  # what a sweep writes before it submits
        plan.ledger.cell(c.id).write_cell(c, "diffusion", plan.matrix.spec.base)

    def start(name: str, cell_id: str = cell.id) -> str:
        cells = str(plan.ledger.cells_dir)
        job = CellJob("tmpl", "diffusion", cell_id, name, dict(cell.values), [], cells, 1,
                      uri, experiment, "local", str(project))  # fmt: skip
        return job._ensure_run(CellRecord(plan.ledger.cells_dir, cell_id))

    run_id = start(cell.run_name)
    first = tracking.run_name(uri, run_id)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(1_765_722_600.0))
    assert first == f"medsegdiff_16c_b4_bf16_adamw1e-4_constant_mse_s0_{stamp}"
    record = plan.ledger.cell(cell.id)
    assert record.run_name == first
    assert start(cell.run_name) == run_id  # a resume from the plan made before it started
    assert tracking.run_name(uri, run_id) == first and record.run_name == first
    resumed_plan = make_plan(path)
    assert resumed_plan.cells[0].run_name == first  # status, predict --cell NAME, ...
    assert start(resumed_plan.cells[0].run_name) == run_id
    # A job that created the run but died before the ledger recorded anything: the next
    # start finds the run by its cell tag and records the name it has.
    other = plan.cells[1]
    tags = tracking.cell_tags("tmpl", other.id, dict(other.values), "local", None)
    lost = tracking.start_cell_run(uri, experiment, "other_2025-01-01_00-00-00", tags)
    assert start(other.run_name, other.id) == lost
    assert plan.ledger.cell(other.id).run_name == "other_2025-01-01_00-00-00"
