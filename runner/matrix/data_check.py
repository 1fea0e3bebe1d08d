"""What can be checked of a matrix's data before anything is submitted: every file of each
distinct data config exists and has a reader installed (asked of the recipe's own
``CHECK_DATA`` entry, so the runner knows nothing of layouts or readers).

One question per distinct set of ``data`` overrides, not per cell: a 120-cell ablation over
one dataset asks once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runner.matrix.cells import Cell
from runner.recipe import Recipe

#: Configs validation composed (or remembered, runner.matrix.cache) for the data sets of a
#: matrix, as plain containers: the data check then needs no Hydra composition of its own.
_KNOWN: dict[tuple[str, tuple[str, ...]], Any] = {}


def _composed(recipe: Recipe, overrides: tuple[str, ...]) -> Any:
    known = _KNOWN.get((recipe.name, overrides))
    if known is not None:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(known)
        OmegaConf.set_struct(cfg, True)  # as Hydra composes it: a missing key raises
        return cfg
    return recipe.compose(list(overrides))


def _data_overrides(overrides: Iterable[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] == "data")


def data_sets(base: list[str], cells: list[Cell]) -> list[tuple[str, ...]]:
    """The overrides of each distinct data config of these cells (what the check composes)."""
    return [(*base, *own) for own in sorted({_data_overrides(c.overrides) for c in cells})]


def remember(recipe: Recipe, configs: dict[tuple[str, ...], Any]) -> None:
    """Configs composed elsewhere (plain containers, interpolations unresolved), by
    overrides: the data check uses these instead of composing."""
    for overrides, container in configs.items():
        _KNOWN[(recipe.name, tuple(overrides))] = container


def data_problems(
    recipe: Recipe, base: list[str], cells: list[Cell], listing: bool = True
) -> list[str]:
    """The recipe's problems with each distinct data config of these cells (empty: all can
    be read, or the recipe has no check). ``listing``: also the problems of finding the
    cases at all (a data root that does not exist, a label file missing for an image)."""
    check = recipe.entry("CHECK_DATA")
    if check is None:
        return []
    problems: list[str] = []
    for overrides in data_sets(base, cells):
        cfg = _composed(recipe, overrides)
        try:
            found = check(cfg.data, listing_errors=listing)
        except OSError as exc:  # a path the OS refuses (too long, ...): it can't be listed
            found = [f"data.root={cfg.data.get('root')}: {exc.strerror or exc}"] if listing else []
        for problem in found:
            if problem not in problems:
                problems.append(problem)
    return problems
