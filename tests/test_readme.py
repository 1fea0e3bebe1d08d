"""The README's examples are run, so that the documentation can't drift from the behaviour."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from runner.cli import main
from runner.plan import make_plan
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_quickstart_is_exactly_two_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    assert re.findall(r"```\n(.*?)```", quickstart, flags=re.S) == ["make sweep\nmake test\n"]
    # ... followed by what comes next: the CLI on PATH, the report, the UI; each exists.
    after = README.split("### After the first sweep", 1)[1].split("##", 1)[0]
    (block,) = re.findall(r"```\n(.*?)```", after, flags=re.S)
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    assert lines == ["source .venv/bin/activate", "runner report matrix/demo.yaml", "make ui"]
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"\n{target}:" in makefile for target in ("ui", "plan", "status", "report"))


def test_matrix_example_plans_with_the_documented_names(project: Path, capsys) -> None:
    [example] = [b for b in _blocks("yaml") if "name: isles24_sketch" in b]
    path = project / "example.yaml"
    path.write_text(example)
    assert main(["plan", str(path)]) == 0
    plan = make_plan(path)
    # 3 (model zipped with lr) x 2 x 2 x 2 x 3 seeds = 72, minus unet x ce_weighted
    # (2 optimizers x 2 schedulers x 3 seeds = 12), plus 1 include.
    assert len(plan.cells) == 72 - 12 + 1
    names = {c.run_name for c in plan.cells}
    assert "segresnet_adamw1e-3_onecycle_dicece_s0" in names
    assert "segresnet_adamw1e-3_onecycle_dicece_s0" in README


def test_no_readme_example_passes_for_a_shipped_matrix() -> None:
    """A README matrix named as a shipped one (matrix/NAME.yaml) would claim to be that study:
    such an example must be the shipped file's cells exactly; the sketches have names of their
    own."""
    shipped = {p.stem: p for p in (ROOT / "matrix").glob("*.yaml")}
    for block in _blocks("yaml"):
        name = re.search(r"^name: *([a-z0-9_-]+)", block, flags=re.M)
        if name is None or name.group(1) not in shipped:
            continue
        example = yaml.safe_load(block)
        study = yaml.safe_load(shipped[name.group(1)].read_text())
        for key in ("recipe", "base", "axes", "zip", "exclude", "include", "search", "cv"):
            assert example.get(key) == study.get(key), (name.group(1), key)
    assert "name: isles24_sketch" in README and "isles24_ablation.yaml" in README


def test_validation_example_output(project: Path, capsys) -> None:
    typo = project / "matrix" / "typo.yaml"
    typo.parent.mkdir()
    typo.write_text(
        "name: typo\nrecipe: segmentation\nbase: [data=demo]\naxes:\n"
        "  model: [segresnt, unet]\n  loss: [dice_ce]\n  optimizer.lrr: [1.0e-3]\n"
    )
    assert main(["plan", "matrix/typo.yaml"]) == 2
    err = capsys.readouterr().err
    block = README.split("$ runner plan matrix/typo.yaml\n", 1)[1].split("```", 1)[0]
    for line in block.strip().splitlines():
        assert line in err, line


def test_menu_table_lists_every_config_choice() -> None:
    from runner.recipe import Recipe

    table = README.split("### The menu", 1)[1].split("MONAI builds", 1)[0]
    rows = dict(re.findall(r"^\| (\w+) \| ([\w, ]+) \|$", table, flags=re.M))
    groups = Recipe.load("segmentation").groups
    rows.pop("group")  # the header
    assert {g: c.split(", ") for g, c in rows.items()} == groups


def test_report_examples_parse_and_name_real_options() -> None:
    """The report examples of "how far to trust a report" are commands the CLI accepts."""
    from runner.cli.commands import build_parser

    section = README.split("### One definition per metric")[1].split("\n## ")[0]
    block = re.findall(r"```\n(.*?)```", section, flags=re.S)[0]
    examples = [ln.split("#")[0].split(">")[0].split() for ln in block.splitlines()]
    assert len(examples) == 4
    for argv in examples:
        args = build_parser().parse_args(argv[1:])
        assert args.command == "report"
    assert "metric_rules" in section and "validate_on_original_grid" in section


def test_ink_study_names_and_messages_are_the_runners(tmp_path: Path) -> None:
    """The ink-detection section: the study's run names, the chunking warning and the
    profile's out-of-memory line, as the code writes them."""
    import zarr

    from recipes.components.data.chunked import open_volume
    from runner.cli.profile_view import note

    section = README.split("### Scroll volumes and the ink-detection study", 1)[1]
    section = section.split("## The diffusion recipe", 1)[0]
    names = {c.run_name for c in make_plan(ROOT / "matrix" / "vesuvius_ink.yaml").cells}
    assert "exp001_full_b4_w6" in names and "`exp001_full_b4_w6`" in section
    [warning, oom] = re.findall(r"```\n(.*?)\n```", section, flags=re.S)[1:3]
    path = tmp_path / "data/vesuvius/train/scan_volume.zarr"  # metadata only: no chunk written
    zarr.open_array(str(path), mode="w", shape=(256, 768, 768), chunks=(256, 768, 768), dtype="u2")
    assert str(open_volume(path).chunk_warning([136, 136, 72])) == str(tmp_path) + "/" + warning
    sid, _, message = oom.partition(": ")
    result = {"status": "oom", "phase": "step", "steps": 0, "peak_rss_gb": 1.01,
              "tried_to_allocate_gb": 97.7, "message": message.split("more: ", 1)[1]}  # fmt: skip
    assert note(sid, result) == oom


def test_local_executor_example_validates() -> None:
    import yaml

    from runner.executors.local.options import LocalExecutorOptions

    [example] = [b for b in _blocks("yaml") if b.startswith("executor: {kind: local")]
    options = LocalExecutorOptions.model_validate(yaml.safe_load(example)["executor"])
    assert options.standby and options.slots == 3


def test_bench_commands_parse() -> None:
    """Every ``python -m bench ...`` line of the README is a valid command line."""
    import shlex

    from bench.__main__ import build_parser

    lines = re.findall(r"^(?:\$ )?python -m bench(.*?)(?:\s+#.*)?$", README, flags=re.M)
    assert len(lines) >= 2
    for args in lines:
        build_parser().parse_args(shlex.split(args))


def test_search_methods_are_the_schemas() -> None:
    from typing import get_args

    from runner.matrix.schema import SearchOptions

    line = next(line for line in README.splitlines() if line.strip().startswith("method: tpe"))
    listed = line.split("#", 1)[1].split(":", 1)[0].split("|")
    methods = get_args(SearchOptions.model_fields["method"].annotation)
    assert sorted(m.strip() for m in listed) == sorted(methods)
    assert "`gp`, Optuna's\n  `GPSampler`" in README  # and why it is there


def test_segthor_section_commands_convert_slices_and_grade_the_layerwise_lr(
    project: Path,
) -> None:
    from recipes.components.data.segthor_demo_data import write_slices
    from recipes.components.data.slice_folders import main as convert_main
    from recipes.components.models.build import build_model
    from recipes.components.models.sizes import effective_model_config
    from recipes.components.training.optim import build_optimizer
    from runner.recipe import Recipe

    section = README.split("### The SegTHOR Novograd study", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    demo = [line.split("#")[0].split() for line in blocks[0].splitlines()]
    assert demo == [
        ["make", "sweep", "MATRIX=matrix/demo_segthor.yaml"],
        ["runner", "report", "matrix/demo_segthor.yaml"],
    ]
    assert (ROOT / "matrix" / "demo_segthor.yaml").is_file()
    # The converter, as typed, on slices in the course's layout.
    convert_line, sweep_line = blocks[1].strip().splitlines()
    argv = convert_line.split()
    assert argv[:3] == ["python", "-m", "recipes.components.data.slice_folders"]
    write_slices(project / argv[3], patients=3, val=1, size=16, depth=4)
    assert convert_main(argv[3:]) == 0
    assert (project / argv[4] / "dataset.json").is_file()
    env, command = sweep_line.split(" ", 1)
    assert env == f"SEGTHOR_ROOT={argv[4]}" and command.endswith("matrix/segthor_novograd.yaml")
    plan = make_plan(ROOT / command.split()[-1])
    assert len(plan.cells) == 12  # as the section says
    # The layer-wise line composes and grades both encoder roles.
    (override,) = re.findall(r"^optimizer\.layerwise=.*$", blocks[2], flags=re.M)
    cfg = Recipe.load("segmentation").compose(
        ["dims=2d", "model=dynunet", "model.size=tiny", "training.patch_size=[48,48]", override]
    )
    model = build_model(effective_model_config(cfg.model))
    groups = build_optimizer(cfg.optimizer, model, "dynunet").param_groups
    scales = {g["name"]: g["lr_scale"] for g in groups}
    assert scales["early_encoder.0"] == 0.1 and scales["head"] == 2.0
    assert scales["early_encoder.1"] > 0.1 and scales["deep_encoder.0"] == 0.7


def test_the_run_name_template_example_gives_the_documented_name(project: Path) -> None:
    """The README's template (the MedSegDiff group's convention) is the study's own, and the
    name it shows is the one its first cell of that kind gets."""
    [example] = [b for b in _blocks("yaml") if "{started}" in b and b.startswith("run_name:")]
    study = (ROOT / "matrix" / "isles24_medsegdiff.yaml").read_text()
    assert example.strip() in study
    shown = re.search(r"gives `(medsegdiff_16c_b32[^`]+)`", README)
    assert shown is not None
    plan = make_plan(ROOT / "matrix" / "isles24_medsegdiff.yaml")
    assert shown.group(1) in {c.run_name for c in plan.cells}
