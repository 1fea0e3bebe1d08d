"""``training.select`` chooses best.pt, early stopping's default monitor and the report's
ranking; patiences count ``patience_unit`` (epochs by default, as PyTorch Lightning counts
them when it validates every epoch, which the hydra-lv configs do: ``val_check_interval: 1.0``
in PytorchConnectomics/pytorch_connectomics tutorials/hydra-lv.yaml @ 07657e2d)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from recipes.components.training.checkpoint import Progress
from recipes.components.training.early_stopping import EarlyStopping
from recipes.components.training.optim import build_scheduler
from recipes.components.training.selection import Selection, best_metrics, record_best
from runner.ledger.store import CellState
from runner.matrix.cells import Cell
from runner.report.stats import CellResult, Group, rank_groups, ranking
from runner.testtime.select import _ranked


def test_the_default_selection_is_the_best_val_dice() -> None:
    assert Selection.from_config(OmegaConf.create({})) == Selection("val_dice", "max")
    default = OmegaConf.create({"select": {"metric": "val_dice", "mode": "auto"}})
    assert Selection.from_config(default) == Selection("val_dice", "max")
    are = OmegaConf.create({"select": {"metric": "val_adapted_rand_error", "mode": "auto"}})
    assert Selection.from_config(are) == Selection("val_adapted_rand_error", "min")
    with pytest.raises(ValueError, match=r"training\.select\.metric='train_loss': a validation"):
        Selection.from_config(OmegaConf.create({"select": {"metric": "train_loss"}}))
    with pytest.raises(ValueError, match=r"training\.select\.mode='lowest'; choose max, min"):
        Selection.from_config(
            OmegaConf.create({"select": {"metric": "val_loss", "mode": "lowest"}})
        )


def test_best_epoch_follows_the_selection_and_keeps_its_dice() -> None:
    select = Selection("val_adapted_rand_error", "min")
    progress = Progress()
    seen = [(0.5, 0.6), (0.3, 0.5), (0.4, 0.8), (math.nan, 0.9), (0.3, 0.9)]
    improved = [
        record_best(progress, select, {"val_adapted_rand_error": are, "val_dice": dice}, epoch)
        for epoch, (are, dice) in enumerate(seen, 1)
    ]
    # better only when strictly lower; NaN never; ties keep the earlier epoch
    assert improved == [True, True, False, False, False]
    assert (progress.best_epoch, progress.best_metric, progress.best_val_dice) == (2, 0.3, 0.5)
    assert best_metrics(progress, select) == {
        "best_val_adapted_rand_error": 0.3,
        "best_val_dice": 0.5,
    }
    with pytest.raises(KeyError, match="'val_adapted_rand_error' is not a validation metric"):
        record_best(Progress(), select, {"val_dice": 0.5}, 1)


def _stops(es: EarlyStopping, values: list[float], every: int) -> int | None:
    """The epoch at which ``es`` stops, validating every ``every`` epochs."""
    for i, value in enumerate(values, 1):
        if es.update(Progress(), {"val_loss": value, "val_dice": 0.5}, i * every):
            return i * every
    return None


def test_patience_counts_epochs_unless_told_validations() -> None:
    # Lightning (validation every epoch): no gain since epoch 10, patience 100 -> stops at 110.
    flat = [1.0] + [0.5] + [0.5] * 30  # the best at the 2nd validation, then no gain
    epochs = EarlyStopping({"monitor": "val_loss", "patience": 100}, 10)
    assert _stops(epochs, flat, 10) == 120  # 100 epochs after epoch 20: the 12th validation
    vals = EarlyStopping(
        {"monitor": "val_loss", "patience": 10, "patience_unit": "validations"}, 10
    )
    assert _stops(vals, flat, 10) == 120  # the same, said in validations
    with pytest.raises(ValueError, match="patience_unit='epoch'; choose epochs or validations"):
        EarlyStopping({"patience": 3, "patience_unit": "epoch"}, 10)


def test_early_stopping_monitors_the_selection_by_default() -> None:
    es = EarlyStopping(
        {"monitor": None, "patience": 2, "mode": "auto"},
        1,
        Selection("val_adapted_rand_error", "min"),
    )
    assert (es.monitor, es.mode, es.legacy) == ("val_adapted_rand_error", "min", False)
    # A monitor that is not the selection keeps its own direction by name.
    other = EarlyStopping({"monitor": "val_dice"}, 1, Selection("val_loss", "min"))
    assert (other.monitor, other.mode, other.legacy) == ("val_dice", "max", False)


def _plateau(unit: str | None, patience: int, val_interval: int) -> int:
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    cfg = {"name": "plateau", "interval": "val", "monitor": "val_loss", "factor": 0.5}
    cfg |= {"patience": patience, "threshold": 1e-4, "min_lr": 1e-6}
    if unit is not None:
        cfg["patience_unit"] = unit
    schedule = build_scheduler(OmegaConf.create(cfg), optimizer, 4, 1000, val_interval=val_interval)
    return schedule.scheduler.patience  # type: ignore[union-attr]


def test_plateau_patience_in_epochs_becomes_validations() -> None:
    # The seed's 50 epochs with a validation every 10: the lr halves at the first validation
    # more than 50 epochs after the last gain (the 6th bad one, 60 epochs), as torch does
    # stepped every epoch (the 51st bad epoch).
    assert _plateau(None, 50, 10) == 5
    assert _plateau("epochs", 50, 1) == 50
    assert _plateau("validations", 3, 10) == 3  # conf/scheduler/plateau.yaml's meaning


def _result(name: str, metric: str, mode: str, selected: float, dice: float) -> CellResult:
    cell = Cell(name, {"model": name}, (), name)
    result = CellResult(cell, name, dice, 1, {}, [(1, dice)])
    result.select_metric, result.select_mode, result.selected = metric, mode, selected
    return result


def test_the_report_ranks_groups_by_the_selection() -> None:
    cells = [
        _result("a", "val_adapted_rand_error", "min", 0.30, 0.90),
        _result("b", "val_adapted_rand_error", "min", 0.10, 0.70),
    ]
    assert ranking(cells) == ("val_adapted_rand_error", "min")
    groups = [Group(c.cell.run_name, {}, [c]) for c in cells]
    assert [g.label for g in rank_groups(groups)] == ["b", "a"]  # lower error first, not Dice
    mixed = [*cells, _result("c", "val_dice", "max", 0.8, 0.8)]
    assert ranking(mixed) == ("val_dice", "max")  # no one metric: val Dice


def test_best_cell_uses_the_ledgers_selection() -> None:
    def state(cid: str, value: float | None, metric: str = "val_adapted_rand_error") -> CellState:
        s = CellState(cid, "done", best_val_dice=0.9 - (value or 0))
        s.select_metric, s.select_mode, s.best_metric = metric, "min", value
        return s

    cells = [Cell(i, {}, (), i) for i in ("x", "y", "z")]
    states = {"x": state("x", 0.4), "y": state("y", 0.2), "z": state("z", None)}
    assert [c.id for c in _ranked(cells, states)] == ["y", "x"]  # lowest error first
    # A recipe that says nothing is selected by its val Dice.
    dices = dict(zip("xyz", [0.1, 0.3, 0.2], strict=True))
    old = {i: CellState(i, "done", best_val_dice=d) for i, d in dices.items()}
    assert [c.id for c in _ranked(cells, old)] == ["y", "z", "x"]
    states["z"] = state("z", 0.5, metric="val_loss")
    with pytest.raises(Exception, match="selected on different metrics"):
        _ranked(cells, states)
