"""Every validation error path: the message names file, line, key, value and choices; exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import main
from runner.matrix.schema import EXECUTOR_KINDS
from runner.recipe import Recipe
from tests.conftest import ROOT

MODELS = Recipe.load("segmentation").groups["model"]

GOOD = """
name: demo_check
recipe: segmentation
base: [data=demo]
axes:
  model: [segresnet, unet]
  loss: [dice_ce, ce_weighted]
  optimizer.lr: [1.0e-3, 3.0e-4]
  seed: [0, 1]
"""


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_matrix_plans(write_matrix, project: Path, capsys) -> None:
    code, out, _ = run_cli(capsys, "plan", str(write_matrix(GOOD)))
    assert code == 0
    assert "16 cells: 16 pending" in out
    assert "segresnet_dicece_1e-3_s0" in out or "segresnet_dicece_lr1e-3_s0" in out


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # an unknown config-group choice, with the valid choices and a suggestion
        (
            GOOD.replace("[segresnet, unet]", "[segresnt, unet]"),
            [
                "matrix.yaml:5: axes.model[0]: unknown model choice 'segresnt'",
                "valid choices: " + ", ".join(MODELS),
                "did you mean 'segresnet'?",
            ],
        ),
        # a dotted key that the composed config lacks
        (
            GOOD.replace("optimizer.lr:", "optimizer.lrr:"),
            [
                "matrix.yaml:7: axes.optimizer.lrr:",
                "not a key of the recipe's config",
                "did you mean 'optimizer.lr'?",
            ],
        ),
        # a value of the wrong type
        (
            GOOD.replace("[1.0e-3, 3.0e-4]", "[1.0e-3, fast]"),
            ["matrix.yaml:7: axes.optimizer.lr[1]: expected a number", "got str 'fast'"],
        ),
        (
            GOOD.replace("seed: [0, 1]", "seed: [0, true]"),
            ["axes.seed[1]: expected an integer", "got True"],
        ),
        # an axis that is neither a group nor a config key
        (
            GOOD.replace("seed:", "sed:"),
            ["matrix.yaml:8: axes.sed:", "neither a config group", "did you mean 'seed'?"],
        ),
        # a bad base override
        (
            GOOD.replace("data=demo", "data=demoo"),
            ["matrix.yaml:3: base[0]: unknown data choice 'demoo'", "did you mean 'demo'?"],
        ),
        # a typo in a dotted base key: a suggestion, not Hydra's "+key" advice
        (
            GOOD.replace("base: [data=demo]", "base: [data=demo, training.max_epoch=3]"),
            [
                "matrix.yaml:3: base[1]: 'training.max_epoch' is not a key of the recipe's "
                "config (did you mean 'training.max_epochs'?)",
            ],
        ),
        # unknown top-level key, executor kind and option
        (
            GOOD + "trackin: {uri: x}\n",
            ["matrix.yaml:9: trackin: unknown key 'trackin'", "did you mean 'tracking'?"],
        ),
        (
            GOOD + "executor: {kind: locale}\n",
            [
                "matrix.yaml:9: executor.kind: unknown executor kind 'locale'",
                "valid choices: " + ", ".join(sorted(EXECUTOR_KINDS)),
                "did you mean 'local'?",
            ],
        ),
        (
            GOOD + "executor: {kind: local, slot: 2}\n",
            ["executor.slot: unknown key 'slot'", "did you mean 'slots'?"],
        ),
        (
            GOOD + "executor: {kind: local, slots: 0}\n",
            ["executor.slots: input should be greater than 0, got 0"],
        ),
        # names that would escape the sweep directory
        (
            GOOD.replace("name: demo_check", "name: ../evil"),
            ["matrix.yaml:1: name: invalid name '../evil'"],
        ),
        (
            GOOD.replace("recipe: segmentation", "recipe: segmentaton"),
            ["matrix.yaml:2: recipe: unknown recipe 'segmentaton'", "did you mean 'segmentation'?"],
        ),
        (GOOD.replace("name: demo_check\n", ""), ["name: required key is missing"]),
        ("name: x\nrecipe: segmentation\naxes:\n  model: [unet\n", ["YAML syntax error"]),
        ("name: x\nname: y\nrecipe: segmentation\n", ["matrix.yaml:2: name: duplicate key"]),
        ("- just\n- a list\n", ["expected a mapping", "got a list"]),
        ("", ["got an empty file"]),
        (
            GOOD + "include: [{model: unet, training.max_epoch: 2}]\n",
            ["include[0].training.max_epoch", "did you mean 'training.max_epochs'?"],
        ),
        (
            GOOD + "exclude: [{modl: unet}]\n",
            ["exclude[0].modl: 'modl' is not an axis", "did you mean 'model'?"],
        ),
    ],
)
def test_error_paths(write_matrix, project: Path, capsys, body: str, expected: list[str]) -> None:
    path = write_matrix(body)
    code, out, err = run_cli(capsys, "plan", str(path))
    assert code == 2
    assert out == ""
    for needle in expected:
        assert needle in err, f"{needle!r} not in:\n{err}"
    assert "Traceback" not in err
    assert not (project / "sweeps").exists()  # validation writes nothing


def test_missing_file_and_non_utf8(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "plan", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: file not found" in err
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: x\nrecipe: caf\xe9\n")
    code, _, err = run_cli(capsys, "plan", str(bad))
    assert code == 2 and "latin1.yaml:2: not valid UTF-8" in err


def test_every_problem_is_reported_at_once(write_matrix, project: Path, capsys) -> None:
    body = GOOD.replace("segresnet, unet", "segresnt, unt").replace("optimizer.lr:", "optimizer.l:")
    code, _, err = run_cli(capsys, "plan", str(write_matrix(body)))
    assert code == 2
    assert "'segresnt'" in err and "'unt'" in err and "optimizer.l" in err


def test_real_process_exits_2_without_traceback(write_matrix, tmp_path: Path) -> None:
    path = write_matrix(GOOD.replace("[segresnet, unet]", "[segresnt, unet]"))
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "plan", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert proc.returncode == 2
    assert "unknown model choice 'segresnt'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_json(write_matrix, project: Path, capsys) -> None:
    import json

    code, out, _ = run_cli(capsys, "plan", "--json", str(write_matrix(GOOD)))
    data = json.loads(out)
    assert code == 0 and data["count"] == 16
    first = data["cells"][0]
    assert first["state"] == "pending"
    assert first["overrides"] == [
        "data=demo",
        "model=segresnet",
        "loss=dice_ce",
        "optimizer.lr=0.001",
        "seed=0",
    ]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_schema_and_recipe_problems_are_reported_in_one_pass(
    write_matrix, project: Path, capsys
) -> None:
    """A broken executor block no longer hides the recipe's problems: the rest of the matrix
    is still checked against the recipe, and one run of `plan` lists all three."""
    path = write_matrix(
        "name: onepass\nrecipe: segmentation\n"
        "base: [data=demo, model.size=tiny, training.max_epoch=3]\n"
        "axes:\n  model: [unet, segresnett]\nexecutor: {kind: slurn}\n"
    )
    code, _, err = run_cli(capsys, "plan", str(path))
    assert code == 2
    assert "executor.kind: unknown executor kind 'slurn'" in err and "'slurm'" in err
    assert "base[2]: 'training.max_epoch' is not a key" in err and "'training.max_epochs'" in err
    assert "axes.model[1]: unknown model choice 'segresnett'" in err
