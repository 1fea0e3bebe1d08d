"""ASHA's rungs placed as Oríon places them (``pruner.num_rungs``) or by epoch
(``pruner.rungs``); the geometric ``min_epochs * eta^k`` stays the default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runner.cli import main
from runner.matrix.asha import Asha, orion_rungs
from runner.plan import make_plan
from runner.search.prune import Reporter


def _orion(low: float, high: float, eta: int, n: int) -> list[int]:
    """Oríon's compute_budgets (src/orion/algo/asha/asha.py @ 1b20511), numpy as it is."""
    budgets = np.logspace(np.log(low) / np.log(eta), np.log(high) / np.log(eta), n, base=eta)
    budgets = (budgets + 0.5).astype(int)
    for i in range(n - 1):
        if budgets[i] >= budgets[i + 1]:
            budgets[i + 1] = budgets[i] + 1
    return [int(b) for b in budgets]


@pytest.mark.parametrize(
    "low,high,n", [(15, 50, 4), (1, 100, 5), (2, 6, 3), (1, 9, 3), (3, 10, 8), (10, 11, 2)]
)
def test_num_rungs_are_orions_budgets(low: int, high: int, n: int) -> None:
    assert orion_rungs(low, high, n) == _orion(low, high, 2, n) == _orion(low, high, 4, n)
    assert orion_rungs(15, 50, 4) == [15, 22, 33, 50]
    placed = Asha(low, high, 2, placed=tuple(orion_rungs(low, high, n)))
    assert placed.rungs() == orion_rungs(low, high, n)[:-1]  # the last one is the end


def test_rungs_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="4 rungs don't fit between 15 and 17 epochs"):
        orion_rungs(15, 17, 4)


def _write(project: Path, pruner: str) -> Path:
    path = project / "m.yaml"
    path.write_text(
        "name: r\nrecipe: segmentation\nbase: [data=demo, model=meshnet]\n"
        "search:\n  method: random\n  trials: 2\n"
        "  space: {optimizer.lr: 'loguniform(1e-4, 4e-2)'}\n"
        f"pruner:\n{pruner}"
    )
    return path


def test_the_plan_and_the_job_compare_at_the_placed_rungs(project: Path, capsys) -> None:
    head = "  kind: asha\n  min_epochs: 15\n  max_epochs: 50\n  reduction_factor: 2\n"
    for extra in ("  num_rungs: 4\n", "  rungs: [15, 22, 33, 50]\n", "  rungs: [15, 22, 33]\n"):
        plan = make_plan(_write(project, head + extra))
        assert plan.search.asha.rungs() == [15, 22, 33]
        spec = plan.search.spec_for(plan.cells[0])
        assert spec.rungs is not None and Reporter(spec)(14, {"val_dice": 0.5}) is None
        assert "rungs at epochs [15, 22, 33] of 50, eta 2" in plan.search.describe()
    # Without them, the geometric rungs of before.
    assert make_plan(_write(project, head)).search.asha.rungs() == [15, 30]
    # Brackets skip the first rungs, as Oríon's.
    plan = make_plan(_write(project, head + "  num_rungs: 4\n  brackets: 2\n"))
    assert plan.search.asha.rungs(1) == [22, 33]


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            "  rungs: [10, 22, 60]\n",
            "m.yaml:12: pruner.rungs[0]: rung 10 is outside [min_epochs 15, max_epochs 50]",
        ),
        (
            "  rungs: [10, 22, 60]\n",
            "m.yaml:12: pruner.rungs[2]: rung 60 is outside [min_epochs 15, max_epochs 50]",
        ),
        ("  rungs: [15, 33, 22]\n", "pruner.rungs[2]: rungs must increase: 22 follows 33"),
        ("  rungs: [15]\n  num_rungs: 3\n", "pruner.rungs: give pruner.rungs or pruner.num_rungs"),
        ("  num_rungs: 40\n", "pruner.num_rungs: 40 rungs don't fit between 15 and 50 epochs"),
        (
            "  rungs: [15, 22]\n  brackets: 3\n",
            "pruner.brackets: the rungs below max_epochs 50 are [15, 22]: 3 bracket(s)",
        ),
    ],
)
def test_bad_rungs_are_an_error_at_their_line(project: Path, capsys, extra, message) -> None:
    head = "  kind: asha\n  min_epochs: 15\n  max_epochs: 50\n"
    assert main(["plan", str(_write(project, head + extra))]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_readme_pruner_compares_at_orions_rungs(project: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [block] = [b for b in readme.split("```yaml\n")[1:] if b.lstrip().startswith("pruner:")]
    pruner = block.split("```", 1)[0].strip().removeprefix("pruner:").strip()
    plan = make_plan(_write(project, f"  {pruner}\n"))
    assert plan.search.asha.rungs() == [15, 22, 33] and plan.search.asha.max_epochs == 50
