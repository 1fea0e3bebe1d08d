"""Search spaces, trials as cells and ASHA, without training: the matrix's ``search``,
``pruner`` and ``restarts`` blocks are validated like axes; the same matrix and seed give
the same trials; raising ``trials`` keeps those made; TPE slots are asked once; ASHA prunes
a cell below the top 1/eta at its rung (on a real Optuna journal); pruned is terminal and
only ``resume --only pruned`` takes it."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from runner.cli import main
from runner.ledger import TERMINAL, CellState
from runner.matrix.asha import Asha, decide, reason, rung_of_reason
from runner.matrix.cells import format_number
from runner.matrix.space import Space, parse, rounded
from runner.plan import make_plan
from runner.search import study as journal
from runner.search.prune import Reporter, SearchSpec
from runner.sweep.refill import ask_new
from runner.sweep.selection import REASON_KINDS, for_resume

HEAD = "name: s\nrecipe: segmentation\nbase: [data=demo, model=meshnet, loss=ce_weighted]\n"


def _write(project: Path, body: str) -> Path:
    path = project / "matrix.yaml"
    path.write_text(HEAD + textwrap.dedent(body).lstrip())
    return path


def _errors(project: Path, body: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["plan", str(_write(project, body))]) == 2
    return capsys.readouterr().err


SEARCH = """
search:
  method: random
  trials: {trials}
  seed: {seed}
  space:
    model.width: int_uniform(5, 21)
    optimizer.lr: loguniform(1e-4, 4e-2)
    loss.background_weight: uniform(0, 1)
    scheduler.warmup_fraction: choice(0.02, 0.1, 0.2)
"""


def _plan(project: Path, trials: int = 4, seed: int = 0, extra: str = "") -> object:
    return make_plan(_write(project, SEARCH.format(trials=trials, seed=seed) + extra))


# --- the search block is validated as strictly as axes ---------------------------------------


def test_bad_distributions_point_at_their_lines(project: Path, capsys) -> None:
    err = _errors(
        project,
        """
        search:
          method: random
          trials: 3
          space:
            optimizer.lr: loguniform(0, 4e-2)
            optimizer.weight_decay: uniform(0.1, 0.01)
            model.width: uniform(5, 21)
            loss.name: normal(0, 1)
            training.batch_size: int_uniform(1.5, 3)
          trails: 3
        """,
        capsys,
    )
    assert (
        "matrix.yaml:8: search.space.optimizer.lr: loguniform(a, b) samples between log(a) " in err
    )
    assert "write uniform(0, 0.04) to sample from 0 on, or give a positive low bound" in err
    assert "matrix.yaml:9: search.space.optimizer.weight_decay: the low bound 0.1 must be " in err
    assert "matrix.yaml:11: search.space.loss.name: unknown distribution 'normal'" in err
    assert "(did you mean 'uniform'?)" in err
    assert "matrix.yaml:12: search.space.training.batch_size: int_uniform(a, b) takes two " in err
    assert "matrix.yaml:13: search.trails: unknown key 'trails'; valid keys: batch, method" in err
    assert "(did you mean 'trials'?)" in err


def test_searched_keys_are_checked_against_the_config(project: Path, capsys) -> None:
    err = _errors(
        project,
        """
        search:
          method: tpe
          trials: 3
          space:
            model.width: uniform(5, 21)
            optimizer.lrr: loguniform(1e-4, 1e-2)
            model: choice(meshnet, segresnt)
        """,
        capsys,
    )
    assert (
        "matrix.yaml:8: search.space.model.width: expected an integer (like 26), got float 5.0;"
        " use int_uniform(a, b)" in err
    )
    assert "matrix.yaml:9: search.space.optimizer.lrr: 'optimizer.lrr' is not a key" in err
    assert "(did you mean 'optimizer.lr'?)" in err
    assert "search.space.model: unknown model choice 'segresnt'" in err


def test_method_pruner_and_restarts_are_checked(project: Path, capsys) -> None:
    err = _errors(
        project,
        """
        axes: {optimizer.lr: [1.0e-3]}
        search:
          method: gird
          space: {optimizer.lr: "loguniform(1e-4, 1e-2)"}
        pruner: {kind: asha, min_epochs: 9, max_epochs: 9}
        """,
        capsys,
    )
    assert "search.method: invalid value 'gird'; valid choices: gp, grid, random, tpe" in err
    assert "(did you mean 'grid'?)" in err
    err = _errors(
        project,
        """
        axes: {optimizer.lr: [1.0e-3]}
        search:
          method: grid
          space: {optimizer.lr: "loguniform(1e-4, 1e-2)"}
        pruner: {kind: asha, min_epochs: 9, max_epochs: 9}
        restarts: {seeds: 3}
        """,
        capsys,
    )
    assert "search.space.optimizer.lr: 'optimizer.lr' is both an axis" in err
    assert "search.space.optimizer.lr: method grid takes choice(...)" in err
    assert "pruner.min_epochs: min_epochs 9 must be below max_epochs 9" in err
    err = _errors(project, "axes: {seed: [0]}\nrestarts: {seeds: 3}\n", capsys)
    assert "matrix.yaml:5: restarts: restarts repeat the best trials of a search" in err
    err = _errors(
        project,
        "axes: {seed: [0]}\npruner: {kind: asha, min_epochs: 1, max_epochs: 9, brackets: 3, "
        "reduction_factor: 3}\n",
        capsys,
    )
    assert "pruner.brackets: bracket 2 would first compare at epoch 9" in err


def test_base_fidelity_conflict_and_injection(project: Path, capsys) -> None:
    path = project / "m.yaml"
    path.write_text(
        "name: g\nrecipe: segmentation\nbase: [data=demo, training.max_epochs=5]\n"
        "axes: {seed: [0, 1]}\npruner: {kind: asha, min_epochs: 1, max_epochs: 9}\n"
    )
    assert main(["plan", str(path)]) == 2
    assert "m.yaml:3: base[1]: training.max_epochs=5 differs from pruner.max_epochs 9" in (
        capsys.readouterr().err
    )
    path.write_text(
        "name: g\nrecipe: segmentation\nbase: [data=demo]\naxes: {seed: [0, 1]}\n"
        "pruner: {kind: asha, min_epochs: 1, max_epochs: 9}\n"
    )
    plan = make_plan(path)
    assert plan.matrix.spec.base == ["data=demo", "training.max_epochs=9"]
    assert len(plan.cells) == 2 and plan.search is not None and plan.search.asha is not None


def test_distribution_parser() -> None:
    assert parse("choice([0.5, 1], [1, 1])").args == ([0.5, 1], [1, 1])
    assert parse("loguniform(1e-4, 4e-2)").args == (1e-4, 4e-2)
    for bad in ("uniform(1)", "choice(a)", "choice(a, a)", "uniform(0, inf)", "int_uniform(a, 2)"):
        with pytest.raises(ValueError):
            parse(bad)
    space = Space({"lr": "loguniform(1e-4, 4e-2)", "w": "choice([0.5, 1], [1, 1])"})
    for i in range(50):
        v = space.sample(f"0:k:{i}")
        assert 1e-4 <= v["lr"] <= 4e-2 and v["w"] in ([0.5, 1], [1, 1])
        assert space.decode(space.encode(v)) == v


# --- trials are cells ------------------------------------------------------------------------


def test_same_seed_same_trials_and_more_trials_keep_the_first(project: Path) -> None:
    first = [(c.id, c.run_name) for c in _plan(project, 4).cells]
    again = [(c.id, c.run_name) for c in _plan(project, 4).cells]
    more = [(c.id, c.run_name) for c in _plan(project, 6).cells]
    other = [(c.id, c.run_name) for c in _plan(project, 4, seed=1).cells]
    assert first == again
    assert more[:4] == first and len(more) == 6
    assert not set(first) & set(other)
    names = [n for _, n in first]
    assert names[0].startswith("t0_width") and "_lr" in names[0]
    # Sampled values are rounded in the name (3 significant digits), exact in the cell.
    lr = _plan(project, 4).cells[0].values["optimizer.lr"]
    assert f"_lr{format_number(rounded(lr))}_" in names[0] and rounded(lr) != lr


def test_each_point_of_the_axes_gets_its_own_search(project: Path) -> None:
    plan = make_plan(
        _write(
            project,
            "axes: {optimizer: [adamw, sgd]}\n" + SEARCH.format(trials=3, seed=0),
        )
    )
    assert len(plan.cells) == 6 and plan.search is not None
    assert len(plan.search.studies) == 2
    for study in plan.search.studies:
        assert {c.values["optimizer"] for c in study.slots if c} == {
            study.point.values["optimizer"]
        }


def test_tpe_slots_are_asked_once_each(project: Path) -> None:
    body = SEARCH.format(trials=4, seed=0).replace("random", "tpe") + "  startup: 2\n"
    a = make_plan(_write(project, body))
    assert len(a.cells) == 2 and a.search.unasked() == 2
    b = make_plan(_write(project, body))
    [asked_a] = ask_new(a, 1)
    [asked_b] = ask_new(b, 5)  # b did not know slot 2 was taken: it takes slot 3
    assert asked_a.origin == "trial[2]" and asked_b.origin == "trial[3]"
    assert ask_new(a, 1) == [] and ask_new(b, 1) == []
    c = make_plan(_write(project, body))
    assert [x.id for x in c.cells] == [x.id for x in b.cells]
    assert c.search.unasked() == 0
    space = Space(c.matrix.spec.search.space)
    assert all(space.dists[k].contains(asked_a.values[k]) for k in space.names())


# --- ASHA ------------------------------------------------------------------------------------


def test_decide_keeps_the_top_third() -> None:
    assert decide(0.5, [0.5], 3, "max").promote
    assert not decide(0.4, [0.5, 0.6, 0.4], 3, "max").promote
    v = decide(0.6, [0.5, 0.6, 0.4, 0.7, 0.3, 0.65], 3, "max")
    assert not v.promote and v.kept == 2 and v.cutoff == 0.65
    assert decide(0.3, [0.5, 0.6, 0.4, 0.7, 0.3, 0.65], 3, "min").promote
    assert not decide(math.nan, [math.nan], 3, "max").promote
    assert Asha(1, 9, 3, 2).rungs(0) == [1, 3] and Asha(1, 9, 3, 2).rungs(1) == [3]
    assert Asha(15, 50, 2).rungs() == [15, 30]
    assert {Asha(1, 9, 3, 2).bracket_of(f"{i:08x}0000") for i in range(4)} == {0, 1}


def test_a_tie_at_the_cutoff_goes_to_the_earlier_arrival() -> None:
    """Top 1/eta is a count: a plateau (every cell still predicting background scores the
    same Dice at an early rung) does not all go on, only as many as the rung keeps."""
    plateau = [0.019] * 8
    # 9 at the rung keep 3; ahead of this one: the better value and 7 of the plateau.
    assert not decide(0.019, [0.2, *plateau], 3, "max").promote
    assert decide(0.019, [0.2, 0.019, 0.019], 3, "max").kept == 1
    assert not decide(0.019, [0.2, 0.019, 0.019], 3, "max").promote
    assert decide(0.019, [0.2, 0.1, 0.1, 0.1, 0.1, 0.019], 3, "min").promote
    # Under the count, a strictly better value still goes on, and the first tie is the best.
    assert decide(0.3, [0.2, *plateau, 0.3], 3, "max").promote
    assert not decide(0.5, [0.5, 0.5], 3, "max").promote
    promoted = 0
    seen: list[float] = []
    for value in plateau:  # arriving one after another
        seen.append(value)
        promoted += decide(value, seen, 3, "max").promote
    assert promoted == 1  # the first: what arrived later never beat it
    verdict = decide(0.019, [0.2, *plateau], 3, "max")
    assert "cutoff 0.0190 (a tie: " in reason("val_dice", 0.019, 0, 1, 3, verdict)
    assert "tie" not in reason("val_dice", 0.01, 0, 1, 3, decide(0.01, [0.2, 0.01, 0.1], 3, "max"))
    # Ties go to the trials started first: one started before the tied ones still goes on.
    assert decide(0.019, [0.2, *plateau], 3, "max", tied_ahead=1).promote
    assert not decide(0.019, [0.2, *plateau], 3, "max", tied_ahead=2).promote


def test_a_cell_below_the_top_third_is_pruned_at_that_rung(project: Path) -> None:
    """Six cells reach rung 0 (epoch 1) in turn, on a real journal: each goes on only when
    it is in the top 1/3 of the values seen there so far."""
    plan = make_plan(
        _write(
            project,
            "axes: {seed: [0, 1, 2, 3, 4, 5]}\n"
            "pruner: {kind: asha, min_epochs: 1, max_epochs: 9, reduction_factor: 3}\n",
        )
    )
    search = plan.search
    values = [0.5, 0.6, 0.4, 0.7, 0.3, 0.65]
    verdicts = []
    reporters = []
    for cell, value in zip(plan.cells, values, strict=True):
        spec = search.spec_for(cell)
        assert spec.asha == (1, 9, 3) and spec.trial_id is not None
        reporter = Reporter(spec)
        verdicts.append(reporter(1, {"val_dice": value, "train_loss": 1.0}))
        reporters.append(reporter)
    pruned = [v is not None for v in verdicts]
    assert pruned == [False, False, True, False, True, False]
    assert verdicts[2].startswith("asha: rung 0 (epoch 1): val_dice 0.4000 is not in the top 1/3")
    assert rung_of_reason(verdicts[4]) == 0
    # Rung 1 (epoch 3): the first there goes on, a worse second one stops.
    assert reporters[3](3, {"val_dice": 0.8}) is None
    assert rung_of_reason(reporters[5](3, {"val_dice": 0.7})) == 1
    reporters[2].finish("pruned")
    reporters[3].finish("done")
    trials = {
        t.user_attrs["cell_id"]: t for t in journal.trials(search.journal, reporters[0].spec.study)
    }
    assert trials[plan.cells[2].id].state.name == "PRUNED"
    assert trials[plan.cells[3].id].state.name == "COMPLETE"
    assert trials[plan.cells[3].id].value == pytest.approx(0.8)
    # A finished trial is not reported to again (resume --only pruned runs to the end).
    again = Reporter(search.spec_for(plan.cells[2]), previous_best=0.4)
    assert again(2, {"val_dice": 0.1}) is None and again.best == 0.4
    # The same cell keeps its trial across claims.
    assert search.spec_for(plan.cells[0]).trial_id == reporters[0].spec.trial_id


def test_search_metric_must_be_a_validation_metric(project: Path) -> None:
    with pytest.raises(KeyError, match="search metric 'val_loss' is not a validation metric"):
        Reporter(SearchSpec("val_loss", "min"))(1, {"val_dice": 0.5})


# --- pruned is a terminal state that only `resume --only pruned` takes -----------------------


def test_pruned_is_terminal_and_resumed_only_on_request(project: Path) -> None:
    assert "pruned" in TERMINAL and "pruned" in REASON_KINDS
    plan = _plan(project, 3)
    cells = plan.cells
    states = {
        cells[0].id: CellState(cells[0].id, "pruned", 1, reason="asha: rung 0 (epoch 1): ..."),
        cells[1].id: CellState(cells[1].id, "done", 1),
        cells[2].id: CellState(cells[2].id, "failed", 1, reason="oom: x"),
    }
    assert for_resume(cells, states, None, None) == [cells[2]]
    assert for_resume(cells, states, ["pruned"], None) == [cells[0]]
    assert for_resume(cells, states, ["pruned", "oom"], None) == [cells[0], cells[2]]


def test_the_groups_searched_keys_exist_in_every_optimizer(project: Path, capsys) -> None:
    """The stroke and EM groups search the optimizer's lr, weight decay and epsilon, the
    net's dropout and the class weights: each is a key of every optimizer config it applies
    to (with the optimizer's own default), so such a search validates instead of exiting 2
    with "not in the config"."""
    body = """
        axes:
          optimizer: [adam, adamw, novograd]
        search:
          method: random
          trials: 2
          space:
            optimizer.lr: loguniform(1e-4, 4e-2)
            optimizer.weight_decay: loguniform(1e-4, 4e-2)
            optimizer.eps: loguniform(1e-10, 1e-6)
            model.dropout: uniform(0, 0.3)
            loss.background_weight: uniform(0, 1)
        """
    assert main(["plan", str(_write(project, body))]) == 0, capsys.readouterr().err
    body = """
        base: [data=demo, model=meshnet, loss=ce_weighted, optimizer=sgd, optimizer.nesterov=false]
        search:
          method: random
          trials: 2
          space:
            optimizer.momentum: uniform(0.9, 0.99)
            optimizer.dampening: uniform(0, 0.1)
        """
    path = project / "sgd.yaml"
    path.write_text(HEAD.split("base:")[0] + textwrap.dedent(body).lstrip())
    assert main(["plan", str(path)]) == 0, capsys.readouterr().err


def test_readme_search_example_plans(project: Path) -> None:
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    [example] = [b for b in readme.split("```yaml\n")[1:] if b.startswith("name: meshnet_search")]
    path = project / "search.yaml"
    path.write_text(example.split("```", 1)[0])
    plan = make_plan(path)
    assert len(plan.search.studies) == 2  # one search per optimizer
    assert plan.search.unasked() == 2 * 15  # startup 5 of 20 made, per optimizer
    assert len(plan.cells) == 10 and plan.matrix.spec.base[-1] == "training.max_epochs=9"


def test_slurm_sweeps_go_in_chunks_of_batch(project: Path) -> None:
    """Without executor slots (SLURM), a sweep takes at most ``batch`` trials: pending ones
    first, then new TPE trials asked to fill the chunk."""
    from runner.sweep.refill import initial

    tpe = SEARCH.format(trials=6, seed=0).replace("random", "tpe")
    plan = make_plan(_write(project, tpe + "  startup: 2\n  batch: 3\n"))
    chunk = initial(plan, list(plan.cells), None)
    assert [c.origin for c in chunk] == ["trial[0]", "trial[1]", "trial[2]"]
    assert make_plan(_write(project, tpe + "  startup: 2\n  batch: 3\n")).search.unasked() == 3
    plan = make_plan(_write(project, SEARCH.format(trials=6, seed=0) + "  batch: 4\n"))
    assert len(initial(plan, list(plan.cells), None)) == 4
    # With slots (local, docker), new trials fill the free slots only.
    plan = make_plan(_write(project, tpe + "  startup: 2\n"))  # the same study: 3 asked
    assert plan.search.unasked() == 3
    assert len(initial(plan, [], 2)) == 2 and plan.search.unasked() == 1
