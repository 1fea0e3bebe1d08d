"""Nested cross-validation (the matrix's ``cv``): outer folds held out for testing, inner
folds to train and choose on; the cells a grid and a search make, the checks at plan time,
the recipe's split, and the whole protocol run for real (search on outer fold 0, restarts on
every outer fold, the selected restarts scored on their held-out folds, the report's
held-out table)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from recipes.components.data.splits import choose_split
from recipes.components.testtime.held_out import exclude_test, held_out_items
from recipes.contract import PredictInputError
from runner.cli import main
from runner.matrix import cv as nested
from runner.plan import make_plan
from tests.conftest import ROOT
from tests.e2e import hold_out, make_tiny_dataset

README = (ROOT / "README.md").read_text()


def _data_cfg(test: object, inner: int = 2, seed: int = 0) -> object:
    return OmegaConf.create(
        {"test": test, "num_folds": inner, "fold": 0, "split_seed": seed, "val_fraction": 0.2}
    )


@pytest.mark.parametrize("n,outer,inner", [(16, 2, 2), (149, 3, 3), (7, 3, 2)])
def test_outer_folds_partition_the_subjects_and_inner_folds_the_rest(n, outer, inner) -> None:
    cases = [f"sub-{i:04d}" for i in range(n)]
    items = [{"case": c} for c in reversed(cases)]  # listing order does not matter
    tests = []
    for k in range(outer):
        cfg = _data_cfg({"fold": k, "folds": outer}, inner, seed=5)
        train, val, method = choose_split(items, cfg)
        test = {i["case"] for i in items} - {i["case"] for i in exclude_test(items, cfg)}
        assert method == "kfold" and test and train and val
        ids = [{i["case"] for i in side} for side in (train, val)]
        assert not (ids[0] & ids[1]) and not (test & (ids[0] | ids[1]))
        assert ids[0] | ids[1] | test == set(cases)
        tests.append(test)
    assert sorted(len(t) for t in tests) == sorted(nested.fold_sizes(n, outer))
    assert set().union(*tests) == set(cases) and sum(map(len, tests)) == n  # disjoint, all


def test_a_bad_outer_fold_is_refused_by_the_recipe(tmp_path: Path) -> None:
    root = make_tiny_dataset(tmp_path / "tiny")
    data = {"name": "demo", "root": str(root), "format": "auto", "split_seed": 0}
    for test, message in (
        ({"fold": 3, "folds": 3}, "fold must be one of 0..2"),
        ({"fold": 0, "folds": 9}, "9 folds need at least 9 cases, the dataset has 6"),
    ):
        with pytest.raises(PredictInputError, match=re.escape(message)):
            held_out_items(OmegaConf.create({**data, "test": test}))
    three = held_out_items(OmegaConf.create({**data, "test": {"fold": 0, "folds": 2}}))
    assert len(three) == 3


# --- cells --------------------------------------------------------------------------------------


def test_the_readme_example_runs_every_cell_on_every_outer_fold(project: Path) -> None:
    [example] = [b for b in re.findall(r"```yaml\n(.*?)```", README, re.S) if "cv:" in b]
    (project / "stroke_cv.yaml").write_text(example)
    plan = make_plan("stroke_cv.yaml")
    names = [c.run_name for c in plan.cells]
    assert len(names) == 12 and names[0] == "width5_s0_outer0" and names[-1] == "width8_s1_outer2"
    assert "`width5_s0_outer0`" in README and "`width8_s1_outer2`" in README
    base = plan.matrix.spec.base
    assert base[-3:] == ["data.num_folds=2", "data.fold=0", "data.split_seed=0"]
    cfg = plan.recipe.compose([*base, *plan.cells[-1].overrides])
    assert OmegaConf.to_container(cfg.data.test) == {"fold": 2, "folds": 3}
    assert (cfg.data.num_folds, cfg.data.fold, cfg.data.split_seed) == (2, 0, 0)


def test_a_search_runs_on_outer_fold_0_and_needs_restarts(project: Path, capsys) -> None:
    search = (
        "search:\n  method: random\n  trials: 3\n"
        "  space: {optimizer.lr: 'loguniform(1e-4, 1e-2)'}\n"
    )
    path = project / "s.yaml"
    path.write_text(
        "name: s\nrecipe: segmentation\nbase: [data=demo]\n"
        + search
        + "restarts: {seeds: 2}\ncv: {outer: 3, inner: 2}\n"
    )
    plan = make_plan(path)
    assert [nested.outer_of(c.values) for c in plan.cells] == [0, 0, 0]
    [study] = plan.search.studies
    restarts = plan.search.restart_cells(study, [plan.cells[1]])
    assert [(nested.outer_of(c.values), c.values["seed"]) for c in restarts] == [
        (k, s) for k in range(3) for s in (1, 2)
    ]
    assert restarts[-1].run_name == "t1_lr" + plan.cells[1].run_name.split("_lr")[1] + "_outer2_s2"
    # The trial's outer fold is replaced, not doubled, in the restart's overrides.
    assert sum(o.startswith("data.test=") for o in restarts[-1].overrides) == 1
    path.write_text(path.read_text().replace("restarts: {seeds: 2}\n", ""))
    assert main(["plan", str(path)]) == 2
    assert "s.yaml:8: cv: a search with cv runs its trials on outer fold 0 only; add restarts" in (
        capsys.readouterr().err
    )


# --- checks at plan time ------------------------------------------------------------------------


def test_keys_cv_sets_are_refused_elsewhere_at_their_line(project: Path, capsys) -> None:
    (project / "bad.yaml").write_text(
        "name: bad\nrecipe: segmentation\n"
        "base: [data=demo, 'data.test=[demo_000]', data.fold=1, data.split_seed=0]\n"
        "axes:\n  data.num_folds: [3]\n"
        "include: [{data.fold: 2}]\n"
        "cv: {outer: 2, inner: 2}\n"
    )
    assert main(["plan", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3: base[1]: data.test=[demo_000]: a cv matrix's test sets are its outer" in err
    assert "bad.yaml:3: base[2]: data.fold=1 conflicts with cv, which sets data.fold=0" in err
    assert "base[3]" not in err  # data.split_seed=0 is what cv sets (seed 0)
    assert "bad.yaml:5: axes.data.num_folds: 'data.num_folds' is set by cv (the inner" in err
    assert "bad.yaml:6: include[0].data.fold: 'data.fold' is set by cv" in err


def test_fold_counts_the_subjects_cannot_fill_are_refused(project: Path, capsys) -> None:
    make_tiny_dataset(project / "data" / "tiny")  # 6 subjects
    [example] = [b for b in re.findall(r"```yaml\n(.*?)```", README, re.S) if "cv:" in b]
    text = example.replace("base: [data=demo,", "base: [data=demo, data.root=data/tiny,")
    path = project / "stroke_cv.yaml"
    path.write_text(re.sub(r"cv: \{[^}]*\}", "cv: {outer: 2, inner: 4, seed: 0}", text))
    assert main(["plan", "stroke_cv.yaml"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    documented = README.split("error: stroke_cv.yaml", 1)[1].split("\n", 1)[0]
    assert "stroke_cv.yaml" + documented in err
    path.write_text(re.sub(r"cv: \{[^}]*\}", "cv: {outer: 7, inner: 2}", text))
    assert main(["plan", "stroke_cv.yaml"]) == 2
    assert (
        "stroke_cv.yaml:7: cv.outer: 7 outer folds need at least 7 subjects; "
        "data.root=data/tiny has 6: lower cv.outer"
    ) in " ".join(capsys.readouterr().err.split())
    path.write_text(re.sub(r"cv: \{[^}]*\}", "cv: {outer: 2, inner: 3}", text))
    assert main(["plan", "stroke_cv.yaml"]) == 0  # 3 held out, 3 left for 3 inner folds


# --- the protocol, for real ---------------------------------------------------------------------


def _reduced_demo(project: Path, data: Path) -> Path:
    """matrix/demo_stroke_nested.yaml at test sizes: 6 subjects of 24³, 3 trials of a narrow
    MeshNet over 3 epochs (Oríon's rungs at 1 and 2), in this process."""
    spec = yaml.safe_load((ROOT / "matrix" / "demo_stroke_nested.yaml").read_text())
    sizes = {"training.patch_size": "[24,24,24]"}
    spec["base"] = [
        f"{k}={sizes[k]}" if (k := b.partition("=")[0]) in sizes else b for b in spec["base"]
    ] + [f"data.root={data}", "model.dilations=[1,2,1]"]
    spec["search"]["trials"] = 3
    spec["search"]["space"]["model.width"] = "int_uniform(2, 4)"
    spec["pruner"].update(min_epochs=1, max_epochs=3, num_rungs=3)
    spec["executor"] = {"kind": "debug"}
    spec["tracking"] = {"uri": f"sqlite:///{project / 'mlruns.db'}"}
    path = project / "demo_stroke_nested.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_protocol_selects_on_inner_folds_and_scores_on_held_out_folds(
    project: Path, capsys
) -> None:
    path = _reduced_demo(project, make_tiny_dataset(project / "tiny"))
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path)
    states = plan.states()
    trials = [c for c in plan.cells if c.origin.startswith("trial")]
    restarts = [c for c in plan.cells if c.origin == "restart"]
    assert {nested.outer_of(c.values) for c in trials} == {0}
    assert sorted((nested.outer_of(c.values), c.values["seed"]) for c in restarts) == [
        (0, 1), (0, 2), (1, 1), (1, 2),
    ]  # fmt: skip
    assert all(states[c.id].state == "done" for c in restarts)
    assert main(["sync", str(path)]) == 0
    capsys.readouterr()

    assert main(["evaluate", str(path), "--best"]) == 0
    client = MlflowClient(tracking_uri=plan.tracking_uri)
    scored = {}
    for fold in (0, 1):
        mine = [c for c in restarts if nested.outer_of(c.values) == fold]
        best = max(mine, key=lambda c: (states[c.id].best_val_dice, -mine.index(c)))
        run = client.get_run(states[best.id].run_id)
        assert "test_dice" in run.data.metrics  # the selected restart, scored
        assert all("test_dice" not in client.get_run(states[c.id].run_id).data.metrics
                   for c in mine if c is not best)  # fmt: skip
        split = json.loads(
            Path(client.download_artifacts(run.info.run_id, "split.json")).read_text()
        )
        summary = json.loads((plan.ledger.cell(best.id).dir / "test" / "summary.json").read_text())
        test = {Path(c["reference_file"]).name.split(".")[0] for c in summary["metric_per_case"]}
        assert test and not test & (set(split["train"]) | set(split["val"]))
        scored[fold] = (test, states[best.id].best_val_dice, run.data.metrics["test_dice"])
    assert not scored[0][0] & scored[1][0] and len(scored[0][0] | scored[1][0]) == 6

    assert main(["report", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    title = "nested CV, 2 outer x 2 inner folds: held-out test Dice of each outer fold's best of"
    assert title in out and "2 of 2" in out
    assert out.index(title) > out.index("trials (random), ranked by val_dice")  # it ends there
    report = json.loads((plan.ledger.root / "report" / "report.json").read_text())
    [row] = report["nested_cv"]["configurations"]
    tests = [scored[k][2] for k in (0, 1)]
    assert row["test_dice_mean"] == pytest.approx(statistics.fmean(tests))
    assert row["test_dice_std"] == pytest.approx(statistics.stdev(tests))
    gap = statistics.fmean(scored[k][1] - scored[k][2] for k in (0, 1))
    assert row["optimism_mean"] == pytest.approx(gap)
    assert (plan.ledger.root / "report" / "held_out_folds.csv").is_file()


def test_a_held_out_set_that_overlaps_the_training_cases_is_refused_at_plan(
    project: Path, capsys
) -> None:
    """Without cv too: nnU-Net's labelsTs holding a training case's id, or a listed id the
    dataset lacks, stops `runner plan` (not every cell at start-up)."""
    root = make_tiny_dataset(project / "tiny")
    hold_out(root, ["demo_001"], copy=True)
    path = project / "m.yaml"
    for test, message in (
        ("imagesTs", "data.test=imagesTs: cases ['demo_001'] are also training cases"),
        ("[demo_009]", "data.test: no case 'demo_009' in the dataset"),
    ):
        path.write_text(
            f"name: m\nrecipe: segmentation\nbase: [data=demo, data.root={root}, "
            f"'data.test={test}']\naxes: {{seed: [0]}}\n"
        )
        assert main(["plan", str(path)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "the data can't be read" in err and message in err, err
