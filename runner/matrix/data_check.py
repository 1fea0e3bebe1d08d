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


def _composed(recipe: Recipe, overrides: tuple[str, ...], known: dict[tuple[str, ...], Any]) -> Any:
    """The config of these overrides: the one validation composed, else composed now."""
    if overrides in known:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(known[overrides])
        OmegaConf.set_struct(cfg, True)  # as Hydra composes it: a missing key raises
        return cfg
    return recipe.compose(list(overrides))


def _data_overrides(overrides: Iterable[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] == "data")


def data_sets(base: list[str], cells: list[Cell]) -> list[tuple[str, ...]]:
    """The overrides of each distinct data config of these cells (what the check composes)."""
    return [(*base, *own) for own in sorted({_data_overrides(c.overrides) for c in cells})]


def data_problems(
    recipe: Recipe,
    base: list[str],
    cells: list[Cell],
    known: dict[tuple[str, ...], Any],
    listing: bool = True,
) -> list[str]:
    """The recipe's problems with each distinct data config of these cells (empty: all can
    be read, or the recipe has no check). ``known``: the configs validation composed (the
    plan's ``data_configs``). ``listing``: also the problems of finding the cases at all (a
    data root that does not exist, a label file missing for an image)."""
    check = recipe.entry("CHECK_DATA")
    if check is None:
        return []
    problems: list[str] = []
    for overrides in data_sets(base, cells):
        cfg = _composed(recipe, overrides, known)
        try:
            found = check(cfg.data, listing_errors=listing)
        except OSError as exc:  # a path the OS refuses (too long, ...): it can't be listed
            found = [f"data.root={cfg.data.get('root')}: {exc.strerror or exc}"] if listing else []
        for problem in found:
            if problem not in problems:
                problems.append(problem)
    return problems


def case_counts(
    recipe: Recipe, base: list[str], cells: list[Cell], known: dict[tuple[str, ...], Any]
) -> list[tuple[str, int]]:
    """(where, how many cases) of each distinct dataset of these cells that can be listed
    here, asked of the recipe's ``CASES`` entry (none: [])."""
    listing = recipe.entry("CASES")
    if listing is None:
        return []
    out: list[tuple[str, int]] = []
    for overrides in data_sets(base, cells):
        cfg = _composed(recipe, overrides, known)
        try:
            ids = listing(cfg.data)
        except OSError:
            ids = None
        where = f"data.root={cfg.data.get('root')}"
        if ids is not None and (where, len(ids)) not in out:
            out.append((where, len(ids)))
    return out
