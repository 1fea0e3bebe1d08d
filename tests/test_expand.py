"""Matrix expansion: product, zip, exclude, include, ids and run names."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import MatrixError
from runner.matrix.cells import (
    cell_id,
    format_number,
    format_value,
    override_value,
    run_name_tokens,
)
from runner.matrix.expand import expand
from runner.matrix.load import load_matrix

GROUPS = {"model", "optimizer", "scheduler", "loss", "data", "training"}

FULL = """
name: isles24_ablation
recipe: segmentation
base: [data=demo]
axes:
  model: [segresnet, unet, basic_unet]
  optimizer: [adamw, sgd]
  loss: [dice_ce, ce_weighted]
  optimizer.lr: [1.0e-3, 3.0e-4, 1e-4]
  seed: [0, 1]
zip: [[model, optimizer.lr]]
exclude: [{model: unet, loss: ce_weighted}]
include: [{model: unet, optimizer: sgd, seed: 7}]
"""


def test_product_zip_exclude_include(write_matrix) -> None:
    cells = expand(load_matrix(write_matrix(FULL)), GROUPS).cells
    # 3 (model zipped with lr) x 2 optimizers x 2 losses x 2 seeds = 24; exclude removes
    # unet x ce_weighted (2 optimizers x 2 seeds = 4); include adds 1.
    assert len(cells) == 24 - 4 + 1
    pairs = {(c.values["model"], c.values.get("optimizer.lr")) for c in cells if c.origin == "axes"}
    assert pairs == {("segresnet", 1e-3), ("unet", 3e-4), ("basic_unet", 1e-4)}
    assert not any(
        c.values["model"] == "unet" and c.values.get("loss") == "ce_weighted" for c in cells
    )
    extra = [c for c in cells if c.origin == "include[0]"]
    assert [e.values for e in extra] == [{"model": "unet", "optimizer": "sgd", "seed": 7}]
    assert len({c.id for c in cells}) == len(cells)
    assert len({c.run_name for c in cells}) == len(cells)


def test_ids_ignore_key_order_and_number_spelling(write_matrix) -> None:
    a = write_matrix(
        """
        name: m
        recipe: segmentation
        axes: {model: [unet], optimizer.lr: [1.0e-3], seed: [0]}
        """,
        "a.yaml",
    )
    b = write_matrix(
        """
        name: m
        recipe: segmentation
        axes: {seed: [0], optimizer.lr: [0.001], model: [unet]}
        """,
        "b.yaml",
    )
    ca, cb = expand(load_matrix(a), GROUPS).cells, expand(load_matrix(b), GROUPS).cells
    assert ca[0].id == cb[0].id


def test_id_is_stable_across_releases() -> None:
    # A pinned value: changing the hashing scheme would orphan every recorded cell.
    assert cell_id("segmentation", ["model=unet", "seed=0"]) == cell_id(
        "segmentation", ["seed=0", "model=unet"]
    )
    assert cell_id("segmentation", ["model=unet", "seed=0"]) == "6ae34049d11c"


def test_id_changes_with_value_base_and_recipe() -> None:
    ids = {
        cell_id("segmentation", ["model=unet", "seed=0"]),
        cell_id("segmentation", ["model=unet", "seed=1"]),
        cell_id("segmentation", ["model=unet", "seed=0", "data=isles24"]),
        cell_id("other", ["model=unet", "seed=0"]),
    }
    assert len(ids) == 4


def test_run_name_convention(write_matrix) -> None:
    cells = expand(load_matrix(write_matrix(FULL)), GROUPS).cells
    names = {c.run_name for c in cells}
    assert "segresnet_adamw1e-3_dicece_s0" in names
    assert "unet_sgd3e-4_dicece_s1" in names
    assert "unet_sgd_s7" in names  # include cell: only its own keys


def test_run_names_made_unique(write_matrix) -> None:
    path = write_matrix("""
        name: m
        recipe: segmentation
        axes: {model: [unet], seed: [0]}
        include: [{model: unet, seed: 0, training.max_epochs: 2}, {model: u-net, seed: 0}]
        """)
    cells = expand(load_matrix(path), GROUPS).cells
    names = [c.run_name for c in cells]
    assert len(set(names)) == len(names)
    # 'u-net' and 'unet' both shorten to 'unet': both colliding names get an id suffix.
    assert names[0] == f"unet_s0_{cells[0].id[:6]}"
    assert names[2] == f"unet_s0_{cells[2].id[:6]}"
    assert names[1] == "unet_s0_me2"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-3, "1e-3"),
        (3e-4, "3e-4"),
        (2.5e-4, "2.5e-4"),
        (0.5, "0.5"),
        (0.01, "0.01"),
        (100, "100"),
        (1e5, "1e5"),
    ],
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("unet", "unet"),
        ("a b", "'a b'"),
        ("1.0", "'1.0'"),
        ("null", "'null'"),
        (True, "true"),
        (None, "null"),
        ([1, 2], "[1,2]"),
        (1e-3, "0.001"),
    ],
)
def test_override_values_round_trip_hydra_grammar(value: object, text: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert override_value(value) == text
    parsed = OverridesParser.create().parse_override(f"k={text}").value()
    assert parsed == value


def test_duplicate_include_is_dropped_with_warning(write_matrix) -> None:
    path = write_matrix("""
        name: m
        recipe: segmentation
        axes: {model: [unet, segresnet], seed: [0]}
        include: [{seed: 0, model: unet}]
        """)
    expansion = expand(load_matrix(path), GROUPS)
    assert len(expansion.cells) == 2
    assert any("repeats a cell" in w.message for w in expansion.warnings)


def test_exclude_matching_nothing_warns(write_matrix) -> None:
    path = write_matrix("""
        name: m
        recipe: segmentation
        axes: {model: [unet, segresnet]}
        exclude: [{model: basic_unet}]
        """)
    expansion = expand(load_matrix(path), GROUPS)
    assert len(expansion.cells) == 2
    [w] = expansion.warnings
    assert w.key == "exclude[0]" and w.line == 4 and "matches no cell" in w.message


@pytest.mark.parametrize(
    ("body", "needle", "line"),
    [
        ("axes: {model: []}", "axis 'model' is empty", 3),
        ("axes:\n  model: [unet, unet]", "duplicate value 'unet'", 4),
        (
            "axes:\n  model: [unet, segresnet]\n  seed: [0]\nzip: [[model, seed]]",
            "equal lengths; got model: 2, seed: 1",
            6,
        ),
        ("axes:\n  model: [unet]\nzip: [[model, sed]]", "'sed' is not an axis", 5),
        ("axes: {model: [unet]}\nexclude: [{model: unet}]", "every cell is excluded", 4),
        (
            "axes:\n  model: [unet, unet]\n  seed: [0, 0]\nzip: [[model, seed]]",
            "positions 1 and 2 of the zipped axes give the same values",
            6,
        ),
        ("axes: {}", "no axes and no include", 3),
    ],
)
def test_structural_errors(write_matrix, body: str, needle: str, line: int) -> None:
    path: Path = write_matrix("name: m\nrecipe: segmentation\n" + body + "\n")
    with pytest.raises(MatrixError) as info:
        expand(load_matrix(path), GROUPS)
    [problem] = [p for p in info.value.problems if needle in p.message]
    assert problem.line == line


def test_values_read_without_python_reprs() -> None:
    assert [format_value(v) for v in (None, True, False, 1e-3, [2, 3])] == [
        "none",
        "on",
        "off",
        "1e-3",
        "2x3",
    ]
    hydra_dict = "{early_encoder: 0.3, deep_encoder: 1.0, bottleneck: 1.0, decoder: 1.5}"
    tokens = run_name_tokens({"optimizer": "sgd", "optimizer.layerwise": hydra_dict}, GROUPS)
    # the dict is its own short, stable token; the same value always gets the same one
    assert tokens[0] == "sgd" and tokens[1].startswith("layerwise-") and len(tokens[1]) == 16
    again = run_name_tokens({"optimizer": "adamw", "optimizer.layerwise": hydra_dict}, GROUPS)
    assert again[1] == tokens[1]
    assert run_name_tokens({"optimizer": "sgd", "optimizer.layerwise": None}, GROUPS) == [
        "sgdlayerwisenone"
    ]


def test_zipped_axes_may_repeat_a_value_when_their_combinations_differ(write_matrix) -> None:
    """The ink study's experiments: several share a model or a batch size, each row its own."""
    path: Path = write_matrix(
        "name: m\nrecipe: segmentation\naxes:\n  model: [unet, unet, segresnet]\n"
        "  seed: [0, 1, 1]\nzip: [[model, seed]]\n"
    )
    cells = expand(load_matrix(path), GROUPS).cells
    assert [(c.values["model"], c.values["seed"]) for c in cells] == [
        ("unet", 0),
        ("unet", 1),
        ("segresnet", 1),
    ]
