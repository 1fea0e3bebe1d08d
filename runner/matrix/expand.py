"""Expand a matrix into cells: the cartesian product of its axes, zipped axes varying
together, minus ``exclude`` matches, plus ``include`` cells.

Pure and fast (no Hydra, no I/O): checks that need the recipe's configs live in
:mod:`runner.matrix.validate`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from runner.errors import MatrixError, Problem, did_you_mean, format_choices
from runner.matrix import cv as nested
from runner.matrix.cells import (
    Cell,
    assign_run_names,
    cell_id,
    include_origin,
    override,
    value_key,
)
from runner.matrix.cv_checks import check_cv
from runner.matrix.schema import MAX_CELLS, LoadedMatrix
from runner.matrix.search_checks import check_search, restart_axes


@dataclass
class Expansion:
    cells: list[Cell]
    warnings: list[Problem] = field(default_factory=list)
    #: The configs validation composed for each distinct data config of the cells (plain
    #: containers, by overrides): the data check reads these instead of composing again.
    data_configs: dict[tuple[str, ...], Any] = field(default_factory=dict)


_key = value_key


def _check_axes(m: LoadedMatrix) -> list[Problem]:
    problems = []
    spec = m.spec
    if not spec.axes and not spec.include and spec.search is None and spec.cv is None:
        problems.append(m.problem(("axes",), "the matrix has no axes and no include: no cells"))
    # A zipped axis may repeat a value (model: [unet, unet, swin_unetr]); its group's
    # combinations must be distinct instead (checked below).
    in_zip = {name for group in spec.zip for name in group}
    for name, values in spec.axes.items():
        if not values:
            problems.append(
                m.problem(
                    ("axes", name),
                    f"axis '{name}' is empty: give it at least one value, or remove it",
                )
            )
        seen: dict[str, int] = {}
        for i, v in enumerate(values if name not in in_zip else []):
            k = _key(v)
            if k in seen:
                problems.append(
                    m.problem(
                        ("axes", name, i),
                        f"duplicate value {v!r} (also at "
                        f"position {seen[k] + 1}): it would repeat cells",
                    )
                )
            seen.setdefault(k, i)
    zipped: dict[str, int] = {}
    for z, group in enumerate(spec.zip):
        if len(group) < 2:
            problems.append(m.problem(("zip", z), "a zip group needs at least two axes"))
        for j, name in enumerate(group):
            if name not in spec.axes:
                problems.append(
                    m.problem(
                        ("zip", z, j),
                        f"'{name}' is not an axis; axes: "
                        f"{format_choices(spec.axes)}" + did_you_mean(name, spec.axes),
                    )
                )
            elif name in zipped:
                problems.append(
                    m.problem(
                        ("zip", z, j), f"axis '{name}' is already in zip group {zipped[name] + 1}"
                    )
                )
            zipped.setdefault(name, z)
        lengths = {n: len(spec.axes[n]) for n in group if n in spec.axes}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{n}: {k}" for n, k in lengths.items())
            problems.append(
                m.problem(("zip", z), f"zipped axes must have equal lengths; got {shown}")
            )
        elif lengths:
            combos: dict[tuple[str, ...], int] = {}
            columns = [spec.axes[n] for n in group if n in spec.axes]
            for i, combo in enumerate(zip(*columns, strict=True)):
                first = combos.setdefault(tuple(_key(v) for v in combo), i)
                if first != i:
                    problems.append(
                        m.problem(
                            ("zip", z),
                            f"positions {first + 1} and {i + 1} of the zipped axes give the "
                            "same values: it would repeat cells",
                        )
                    )
    return problems + check_search(m) + check_cv(m)


def _units(m: LoadedMatrix) -> list[list[dict[str, Any]]]:
    """Each free axis, and each zip group, becomes one list of partial assignments; ``cv``
    adds the outer folds last (a search's trials: outer fold 0 only, see runner.matrix.cv)."""
    spec = m.spec
    group_of = {name: tuple(g) for g in spec.zip for name in g}
    units: list[list[dict[str, Any]]] = []
    done: set[str] = set()
    for name in spec.axes:
        if name in done:
            continue
        group = group_of.get(name, (name,))
        done.update(group)
        units.append(
            [
                dict(zip(group, combo, strict=True))
                for combo in zip(*(spec.axes[g] for g in group), strict=True)
            ]
        )
    if spec.cv is not None:
        folds = nested.outer_values(spec.cv)
        units.append([{nested.KEY: v} for v in (folds[:1] if spec.search else folds)])
    return units


def _trials_per_point(m: LoadedMatrix) -> int:
    from runner.matrix.space import Space

    s = m.spec.search
    assert s is not None
    trials = s.trials or Space(s.space).grid_size()
    r = m.spec.restarts
    if r is not None:
        per = r.seeds
        for values in restart_axes(m).values():
            per *= max(1, len(values))
        trials += r.top * per
    return trials


def _matches(values: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(k in values and _key(values[k]) == _key(v) for k, v in pattern.items())


def count_product(m: LoadedMatrix, cap: int = 10**18) -> int:
    """Cells in the product; past ``cap`` the partial product (a huge number of axes must
    not build an integer too long to print)."""
    units = _units(m)
    if not units:
        return 1 if m.spec.search is not None else 0
    total = 1
    for unit in units:
        total *= len(unit)
        if total > cap:
            return total
    return total


def _iter_product(m: LoadedMatrix) -> Iterator[dict[str, Any]]:
    units = _units(m)
    if not units:
        if m.spec.search is not None:
            yield {}  # a search without axes: one point, the base config
        return
    order = [*m.spec.axes, *([nested.KEY] if m.spec.cv is not None else [])]
    for parts in itertools.product(*units):
        merged: dict[str, Any] = {}
        for p in parts:
            merged.update(p)
        yield {k: merged[k] for k in order}


def expand(m: LoadedMatrix, groups: set[str] | frozenset[str] = frozenset()) -> Expansion:
    """All cells of the matrix, in a stable order; raise MatrixError on structural problems.

    ``groups`` are the recipe's config-group names: they shape run names only.
    """
    problems = _check_axes(m)
    if problems:
        raise MatrixError(m.file, problems)
    total = count_product(m)
    if m.spec.search is not None:  # each point of the grid gets its own search
        total *= _trials_per_point(m)
    if total > MAX_CELLS:
        count = f"{total:,}" if total <= 10**18 else "more than 10^18"
        raise MatrixError(
            m.file,
            [
                m.problem(
                    ("axes",),
                    f"the axes {'times the trials ' if m.spec.search else ''}multiply to "
                    f"{count} cells; the limit is "
                    f"{MAX_CELLS:,} (split the matrix or zip axes)",
                )
            ],
        )
    spec = m.spec
    warnings: list[Problem] = []
    hits = [0] * len(spec.exclude)
    raw: list[tuple[dict[str, Any], str]] = []
    for values in _iter_product(m):
        excluded = False
        for i, pattern in enumerate(spec.exclude):
            if _matches(values, pattern):
                hits[i] += 1
                excluded = True
        if not excluded:
            raw.append((values, "axes"))
    for i, n in enumerate(hits):
        if n == 0:
            warnings.append(
                m.problem(
                    ("exclude", i),
                    f"exclude {spec.exclude[i]} matches no cell (check the keys and values)",
                )
            )
    for i, extra in enumerate(spec.include):
        if not extra:
            raise MatrixError(m.file, [m.problem(("include", i), "empty include entry")])
        ordered = {k: extra[k] for k in spec.axes if k in extra}
        ordered.update({k: v for k, v in extra.items() if k not in ordered})
        raw.append((ordered, include_origin(i)))

    cells: list[Cell] = []
    seen: dict[str, str] = {}
    spelled: dict[tuple[Any, ...], str] = {}  # a few values per key, spelled out once each

    def spell(k: str, v: Any) -> str:
        try:
            mk: tuple[Any, ...] = (k, type(v).__name__, v)
            hash(mk)
        except TypeError:
            return override(k, v)
        text = spelled.get(mk)
        if text is None:
            text = spelled[mk] = override(k, v)
        return text

    for values, origin in raw:
        overrides = tuple(spell(k, v) for k, v in values.items())
        cid = cell_id(spec.recipe, [*spec.base, *overrides])
        if cid in seen:
            if origin.startswith("include"):
                idx = int(origin[8:-1])
                warnings.append(
                    m.problem(
                        ("include", idx),
                        f"include {dict(values)} repeats a cell of the {seen[cid]}; ignored",
                    )
                )
            continue
        seen[cid] = "axes" if origin == "axes" else origin
        cells.append(Cell(cid, values, overrides, origin=origin))
    if not cells:
        raise MatrixError(
            m.file, [m.problem(("exclude",), "every cell is excluded: nothing to run")]
        )
    return Expansion(assign_run_names(cells, set(groups), m.labels), warnings)
