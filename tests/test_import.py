"""`runner import`: the three groups' own searches (a W&B sweep, an Oríon experiment, a Hydra
multirun) become matrices that plan as written, with their keys mapped, their metric's
direction checked and nothing dropped silently; grid sweeps give the very jobs Hydra runs.

Real parsing (YAML, ast, Hydra's override parser), Hydra's own BasicSweeper for the job
lists, and the runner's own planning (``make_plan``, one ``runner plan`` subprocess)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.cli import import_sweep as import_cli
from runner.errors import RunnerError
from runner.importers import ImportProblem, import_sweep, read_sweep
from runner.importers._project import parse_distribution, pruner_accepts
from runner.plan import make_plan
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data" / "import"
EM = DATA / "em_wandb_sweep.yaml"
STROKE = DATA / "stroke_orion.py"
GRID = DATA / "hydra_grid.txt"
OPTUNA = DATA / "hydra_optuna.yaml"


def _plan(text: str, tmp: Path, name: str = "imported.yaml"):
    path = tmp / name
    path.write_text(text)
    return make_plan(path, workdir=tmp)


def _spec(text: str) -> dict:
    return yaml.safe_load(text)


def _space(spec: dict) -> dict[str, tuple]:
    """key -> (kind, args as floats where numeric): '0' and '0.0' compare equal."""
    out = {}
    for key, text in spec["search"]["space"].items():
        d = parse_distribution(text)
        args = tuple(float(a) if isinstance(a, (int, float)) else json.dumps(a) for a in d.args)
        out[key] = (d.kind, args)
    return out


@pytest.fixture(scope="module")
def em():
    return import_sweep(str(EM), date="2025-01-01", output_name="matrix/em_hydra_lv.yaml")


@pytest.fixture(scope="module")
def stroke():
    return import_sweep(str(STROKE), date="2025-01-01")


# --- the three seed searches ------------------------------------------------------------


def test_em_wandb_sweep_plans_with_its_keys_mapped(em, tmp_path: Path) -> None:
    spec = _spec(em.text)
    assert em.problems == [] and em.unmapped == []
    s = spec["search"]
    # bayes: Optuna's GP sampler, the closest (said which and why)
    assert s["method"] == "gp" and "Gaussian process" in em.text
    assert set(s["space"]) == {
        "model.dropout",
        "optimizer.lr",
        "optimizer.weight_decay",
        "loss.weights",
    }
    assert {"task=em_instance", "model=unet"} <= set(spec["base"])
    assert _space(spec)["optimizer.lr"] == ("loguniform", (1e-4, 1e-2))
    assert parse_distribution(s["space"]["loss.weights"]).args == (
        [1.0, 0.5, 2.0],
        [1.0, 1.0, 3.0],
        [1.0, 1.5, 2.5],
    )
    # their goal maximises an error: written as min, and flagged
    assert (s["metric"], s["mode"]) == ("val_adapted_rand_error", "min")
    assert any("maximizes val/adapted_rand" in w and "lower is better" in w for w in em.warnings)
    # weight decay {min: 0.0, max: 0.1, log: true}: a log range from 0 gets a fix and a hint
    low, high = parse_distribution(s["space"]["optimizer.weight_decay"]).args
    assert 0 < low < high == 0.1
    assert any(
        "log-uniform range can't reach 0.0" in w and "uniform(0.0, 0.1)" in w for w in em.warnings
    )
    assert "# mapping (source key -> recipe key: why):" in em.text
    assert "optimization.optimizer.lr -> optimizer.lr" in em.text
    assert "model.loss_weights -> loss.weights" in em.text
    plan = _plan(em.text, tmp_path, "em_hydra_lv.yaml")
    assert plan.search is not None and plan.cells


def test_em_import_passes_the_real_runner_plan(em, tmp_path: Path) -> None:
    path = tmp_path / "em_hydra_lv.yaml"
    path.write_text(em.text)
    runner = Path(sys.executable).parent / "runner"
    done = subprocess.run(
        [str(runner), "plan", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr


def test_stroke_orion_space_is_the_hand_written_matrix(stroke, tmp_path: Path) -> None:
    spec = _spec(stroke.text)
    assert stroke.problems == [] and stroke.unmapped == []
    hand = _spec((ROOT / "matrix" / "meshnet_asha.yaml").read_text())
    assert _space(spec) == _space(hand)  # the stroke group's search, as written by hand
    s = spec["search"]
    assert (s["method"], s["trials"], s["seed"]) == ("random", 60, 42)
    assert (s["metric"], s["mode"]) == ("val_dice", "max")  # observe(-dice): maximise Dice
    assert {"model=meshnet", "loss=ce_weighted", "scheduler=onecycle"} <= set(spec["base"])
    p = spec["pruner"]
    assert (p["min_epochs"], p["max_epochs"], p["reduction_factor"], p["brackets"]) == (
        15,
        50,
        2,
        1,
    )
    # Oríon's num_rungs 4 (15, 22, 33): written as rungs when the schema takes them, else said
    if pruner_accepts({"rungs": [15, 22, 33]}):
        assert p["rungs"] == [15, 22, 33]
    else:
        assert "rungs" not in p
        assert any("15, 22, 33" in w and "15, 30" in w for w in stroke.warnings)
    assert "channels -> model.width" in stroke.text and "epochs -> pruner" in stroke.text
    plan = _plan(stroke.text, tmp_path)
    assert len(plan.cells) == 60


def test_orion_as_yaml_and_as_a_dict_literal_read_the_same(stroke, tmp_path: Path) -> None:
    space = {
        "channels": "uniform(5, 21, discrete=True)",
        "lr": "loguniform(1e-4, 4e-2)",
        "weight_decay": "loguniform(1e-4, 4e-2)",
        "bg_weight": "uniform(0, 1)",
        "warmup_pct": "choices([0.02, 0.1, 0.2])",
        "epochs": "fidelity(15, 50, base=2)",
    }
    algorithms = {"asha": {"seed": 42, "num_rungs": 4, "num_brackets": 1}}
    as_yaml = tmp_path / "orion.yaml"
    as_yaml.write_text(
        yaml.safe_dump(
            {
                "experiment": {"name": "meshnet_hpo", "max_trials": 60, "algorithms": algorithms},
                "space": space,
            },
            sort_keys=False,
        )
    )
    literal = tmp_path / "orion_dict.txt"
    literal.write_text(
        repr({"name": "meshnet_hpo", "space": space, "algorithms": algorithms, "max_trials": 60})
    )
    for path in (as_yaml, literal):
        got = import_sweep(str(path), date="2025-01-01", check=False)
        assert _space(_spec(got.text)) == _space(_spec(stroke.text))
        assert _spec(got.text)["pruner"] == _spec(stroke.text)["pruner"]
        # no observe() to read: Oríon minimises its objective, named nowhere -> said so
        assert any("names no metric" in w for w in got.warnings)


def test_hydra_optuna_sweeper_config(tmp_path: Path) -> None:
    got = import_sweep(str(OPTUNA), date="2025-01-01")
    spec = _spec(got.text)
    assert got.problems == []
    s = spec["search"]
    assert (s["method"], s["trials"], s["seed"]) == ("tpe", 30, 7)
    assert (s["metric"], s["mode"]) == ("val_loss", "min")  # direction: minimize, no name
    space = _space(spec)
    assert space["optimizer.lr"] == ("loguniform", (1e-5, 1e-2))
    assert space["optimizer.weight_decay"][0] == "loguniform"  # tag(log, interval(0, ..))
    assert space["optimizer.weight_decay"][1][0] > 0
    assert space["training.batch_size"] == ("choice", (1.0, 2.0, 3.0, 4.0))  # range(1, 5)
    assert _plan(got.text, tmp_path).cells


# --- grid round trip: the matrix's cells are the jobs Hydra's BasicSweeper runs ----------


def _hydra_jobs(overrides: list[str]) -> list[list[str]]:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.recipe import Recipe

    conf = str(Recipe.load("segmentation").config_dir)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(conf))
    parser = OverridesParser.create(config_loader=loader)
    [batch] = BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)
    return batch


def _values(overrides, targets=None, renamed=None) -> frozenset:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    targets, renamed = targets or {}, renamed or {}
    out = {}
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = targets.get(ov.key_or_group, ov.key_or_group)
        value = ov.value()
        value = renamed.get(key, {}).get(value, value) if isinstance(value, str) else value
        out[key] = json.dumps(float(value) if type(value) is float else value)
    return frozenset(out.items())


GRIDS = {
    "recipe names": "python train.py -m model=unet,segresnet optimizer.lr=1e-3,3e-4 "
    "seed=range(3) training.max_epochs=5",
    "glob, lists, python -m": "python -m recipes.segmentation --multirun "
    "'model=glob(*unet*,exclude=[swin*,unetr])' seed=0,1 "
    "training.patch_size=[32,32,32],[64,64,16] loss=dice_ce",
    "their names": "python train.py -m architecture=monai_unet,segresnet "
    "optimization.optimizer.lr=0.001,0.0003 system.training.batch_size=1,2",
}


@pytest.mark.parametrize("line", GRIDS.values(), ids=GRIDS.keys())
def test_hydra_grid_cells_are_hydras_jobs(line: str, tmp_path: Path) -> None:
    from runner.importers.hydra_multirun import split_command

    got = import_sweep(line, check=False)
    assert "search" not in _spec(got.text) and got.unmapped == []
    plan = _plan(got.text, tmp_path)
    base = plan.matrix.spec.base
    cells = [_values([*base, *c.overrides]) for c in plan.cells]
    overrides, _ = split_command(line, "test")
    jobs = [_values(job, got.draft.targets, got.draft.renamed) for job in _hydra_jobs(overrides)]
    assert len(cells) == len(jobs) == len(set(jobs))
    assert set(cells) == set(jobs)


def test_hydra_sweeper_params_in_a_config_are_a_grid(tmp_path: Path) -> None:
    conf = tmp_path / "config.yaml"
    conf.write_text(
        "hydra:\n  sweeper:\n    params:\n      model: unet,segresnet\n"
        "      seed: range(2)\n      loss: dice_ce\n"
    )
    got = import_sweep(str(conf), check=False)
    plan = _plan(got.text, tmp_path)
    jobs = _hydra_jobs(["model=unet,segresnet", "seed=range(2)", "loss=dice_ce"])
    assert {_values([*plan.matrix.spec.base, *c.overrides]) for c in plan.cells} == {
        _values(j) for j in jobs
    }


# --- mapping: suggestions, --map, never dropped silently -------------------------------


def _wandb(tmp: Path, body: str, name: str = "sweep.yaml") -> Path:
    path = tmp / name
    path.write_text(body)
    return path


def test_unmapped_keys_are_listed_commented_and_suggested(tmp_path: Path) -> None:
    src = _wandb(
        tmp_path,
        """
method: random
run_cap: 4
metric: {name: dice, goal: maximize}
parameters:
  lr: {min: 0.0001, max: 0.01, distribution: log_uniform_values}
  training.batchsize: {values: [1, 2]}
  frobnicate: {values: [true, false]}
""",
    )
    got = import_sweep(str(src))
    assert got.problems == []  # it plans: the unmapped keys are comments
    assert [u.split(" =")[0] for u in got.unmapped] == ["training.batchsize", "frobnicate"]
    assert "did you mean 'training.batch_size'" in got.text
    assert "#     # training.batchsize: choice(1, 2)" not in got.text
    assert "# training.batchsize: choice(1, 2)" in got.text
    assert "NOT MAPPED" in got.text
    assert sum("not mapped" in w for w in got.warnings) == 2
    again = import_sweep(
        str(src),
        maps={"training.batchsize": "training.batch_size", "frobnicate": "training.augment"},
    )
    assert again.unmapped == [] and again.problems == []
    assert _spec(again.text)["search"]["space"]["training.augment"] == "choice(true, false)"


def test_nothing_left_to_sweep_is_an_error(tmp_path: Path) -> None:
    src = _wandb(tmp_path, "method: grid\nparameters:\n  frobnicate: {values: [1, 2]}\n")
    with pytest.raises(ImportProblem, match="nothing left to sweep"):
        import_sweep(str(src), check=False)


# --- sanity checks the source tools don't make ------------------------------------------


@pytest.mark.parametrize(
    ("metric", "goal", "written", "flagged"),
    [
        ("val/adapted_rand", "maximize", ("val_adapted_rand_error", "min"), True),
        ("val_voi", "maximize", ("val_voi", "min"), True),
        ("hd95", "maximize", ("val_hd95", "min"), True),
        ("val_loss", "maximize", ("val_loss", "min"), True),
        ("dice", "minimize", ("val_dice", "max"), True),
        ("val/dice", "maximize", ("val_dice", "max"), False),
    ],
)
def test_metric_direction_is_checked(tmp_path, metric, goal, written, flagged) -> None:
    src = _wandb(
        tmp_path,
        f"method: random\nrun_cap: 2\nmetric: {{name: {metric}, goal: "
        f"{goal}}}\nparameters:\n  lr: {{min: 0.001, max: 0.01}}\n",
    )
    got = import_sweep(str(src), check=False)
    s = _spec(got.text)["search"]
    assert (s["metric"], s["mode"]) == written
    assert any("is better" in w for w in got.warnings) == flagged


def test_distributions_optuna_cant_express_get_the_closest(tmp_path: Path) -> None:
    src = _wandb(
        tmp_path,
        """
method: random
run_cap: 3
parameters:
  lr: {distribution: log_normal, mu: -6.9, sigma: 0.5}
  model.dropout: {distribution: beta, a: 2, b: 5}
  loss.label_smoothing: {distribution: q_uniform, min: 0.0, max: 0.1, q: 0.05}
  weight_decay: {distribution: log_uniform, min: -9.2, max: -2.3}
""",
    )
    got = import_sweep(str(src))
    space = _spec(got.text)["search"]["space"]
    assert space["optimizer.lr"].startswith("loguniform(")
    assert space["model.dropout"] == "uniform(0.0, 1.0)"
    assert space["loss.label_smoothing"] == "choice(0.0, 0.05, 0.1)"
    low, high = parse_distribution(space["optimizer.weight_decay"]).args
    assert low == pytest.approx(1.01e-4, rel=0.01) and high == pytest.approx(0.1, rel=0.01)
    assert any("log-normal" in w for w in got.warnings)
    assert any("beta is not a distribution Optuna samples" in w for w in got.warnings)
    assert got.problems == []


def test_wandb_integer_bounds_on_a_float_key_are_flagged(tmp_path: Path) -> None:
    src = _wandb(
        tmp_path,
        "method: random\nrun_cap: 2\nparameters:\n  loss.label_smoothing: {min: 0, max: 1}\n",
    )
    got = import_sweep(str(src), check=False)
    assert _spec(got.text)["search"]["space"]["loss.label_smoothing"] == "uniform(0.0, 1.0)"
    assert any("samples integers" in w for w in got.warnings)


def test_wandb_hyperband_becomes_the_pruner(tmp_path: Path) -> None:
    src = _wandb(
        tmp_path,
        """
method: random
run_cap: 9
metric: {name: val_dice, goal: maximize}
parameters:
  lr: {min: 0.0001, max: 0.01, distribution: log_uniform_values}
  epochs: {value: 27}
early_terminate: {type: hyperband, min_iter: 3, eta: 3}
""",
    )
    got = import_sweep(str(src))
    p = _spec(got.text)["pruner"]
    assert (p["min_epochs"], p["max_epochs"], p["reduction_factor"]) == (3, 27, 3)
    assert got.problems == []


# --- bad input: one line, file/line/key, exit 2 -----------------------------------------


@pytest.mark.parametrize(
    ("body", "name", "expected"),
    [
        ("foo: 1\nbar: [1, 2]\n", "x.yaml", "x.yaml: not a W&B sweep"),
        (
            "space:\n  ch: 'uniform(5, 21, discrete=True)'\n  lr: 'loguniform(1e-4, 4e-2'\n"
            "algorithms: {asha: {seed: 1}}\n",
            "x.yaml",
            "x.yaml:3: space.lr: cannot read the prior",
        ),
        (
            "method: random\nparameters: {}\n",
            "x.yaml",
            "x.yaml:2: parameters: the sweep has no parameters",
        ),
        (
            "method: random\nparameters:\n  lr: {min: 0.1, max: 0.01}\n",
            "x.yaml",
            "x.yaml:3: lr: the range [0.1, 0.01] is empty",
        ),
        (
            "from orion.client import create_experiment\n\ncreate_experiment(space=make())\n",
            "x.py",
            "x.py:3: create_experiment(space=...) is not a literal",
        ),
        ("parameters:\n  lr: {min: 1, max: [\n", "x.yaml", "x.yaml:3: not valid YAML/JSON"),
        ("", "x.yaml", "x.yaml: the file is empty"),
    ],
)
def test_bad_sources_are_one_clear_line(tmp_path, body, name, expected) -> None:
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(RunnerError) as info:
        import_sweep(str(path), check=False)
    text = str(info.value).replace(str(tmp_path) + "/", "")
    assert text.startswith(expected), text
    assert "\n" not in text and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("missing.yaml", "missing.yaml: no such file"),
        ("python t.py -m a=1,2 --bogus", "command line: '--bogus' is neither a Hydra flag"),
        ("python t.py -m 'a=choice(1,'", "command line: cannot read the override 'a=choice(1,'"),
        ("python t.py -m ~model", "command line: '~model': deleting a key"),
    ],
)
def test_bad_command_lines_are_one_clear_line(source, expected) -> None:
    with pytest.raises(RunnerError) as info:
        import_sweep(source, check=False)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


# --- the command ------------------------------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="runner")
    import_cli.add_parser(parser.add_subparsers(dest="command"), import_cli.run)
    args = parser.parse_args(["import", *argv])
    out, err = io.StringIO(), io.StringIO()
    try:
        code = args.fn(args, out, err)
    except RunnerError as exc:  # what runner.cli.commands.main prints, with this exit code
        return exc.exit_code, out.getvalue(), str(exc)
    return code, out.getvalue(), err.getvalue()


def test_command_writes_the_matrix_and_says_what_to_check(tmp_path: Path) -> None:
    target = tmp_path / "em.yaml"
    code, out, err = _run(
        [
            str(EM),
            "--recipe",
            "segmentation",
            "-o",
            str(target),
            "--base",
            "data=em_demo",
            "--trials",
            "8",
        ]
    )
    assert code == 0, err
    spec = _spec(target.read_text())
    assert spec["name"] == "em" and spec["base"][0] == "data=em_demo"
    assert spec["search"]["trials"] == 8
    assert "warning: the source maximizes val/adapted_rand" in err
    assert f"next: runner plan {target}" in err and out == ""
    code, _, err = _run([str(EM), "-o", str(target)])
    assert code == 2 and "exists" in err
    code, out, _ = _run([GRID.read_text(), "--format", "hydra"])
    assert code == 0 and _spec(out)["axes"]["seed"] == [0, 1, 2]
    code, _, err = _run([str(EM), "--format", "orion"])
    assert code == 2 and "space" in err


def test_command_strict_refuses_unmapped_keys(tmp_path: Path) -> None:
    src = _wandb(
        tmp_path,
        "method: grid\nparameters:\n  seed: {values: [0, 1]}\n  frobnicate: {values: [1, 2]}\n",
    )
    code, _, err = _run([str(src), "--strict", "-o", str(tmp_path / "m.yaml")])
    assert code == 2 and "frobnicate" in err and not (tmp_path / "m.yaml").exists()
    code, _, err = _run([str(src), "-o", str(tmp_path / "m.yaml")])
    assert code == 0 and "warning: not mapped: frobnicate" in err


def test_command_reports_a_matrix_that_does_not_plan(tmp_path: Path) -> None:
    # the user's epochs against Oríon's fidelity: written, runner plan's own words (exit 1)
    out = tmp_path / "m.yaml"
    code, _, err = _run([str(STROKE), "--base", "training.max_epochs=100", "-o", str(out)])
    assert code == 1 and "does not plan as written" in err and out.exists()
    assert f"{out}:" in err and "differs from pruner.max_epochs 50" in err
    # a base the recipe can't compose: nothing written, one line (exit 2)
    code, _, err = _run([str(STROKE), "--base", "data=nosuchdata", "-o", str(tmp_path / "n.yaml")])
    assert code == 2 and "--base:" in err and "data/nosuchdata" in err and "\n" not in err


def test_read_sweep_keeps_the_source_names() -> None:
    sweep = read_sweep(str(STROKE))
    assert [p.key for p in sweep.params] == [
        "channels",
        "lr",
        "weight_decay",
        "bg_weight",
        "warmup_pct",
        "epochs",
    ]
    assert sweep.pruner is not None and sweep.pruner.source_rungs == [15, 22, 33]


def test_readme_bring_your_sweep_examples_run(project: Path) -> None:
    """The README's "Bring your sweep" commands, run as written from a checkout's root."""
    import shlex
    import shutil

    from runner.cli import main

    readme = (ROOT / "README.md").read_text()
    if "## Bring your sweep" not in readme:
        pytest.skip("README has no 'Bring your sweep' section yet")
    section = readme.split("## Bring your sweep", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    shutil.copytree(DATA, project / "tests" / "data" / "import")
    (project / "matrix").mkdir()
    lines = [ln.split("  #")[0] for ln in block.splitlines() if ln.startswith("runner ")]
    assert any(ln.startswith("runner import") for ln in lines)
    for line in lines:
        assert main(shlex.split(line)[1:]) == 0, line
