"""Check a matrix against its recipe before anything runs.

Every axis value that names a config-group choice must exist; every dotted key must exist
in the config composed for that cell's group choices, with a value of a compatible type.
Each problem points at the matrix line that caused it, with the valid choices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, ListConfig

from runner.errors import MatrixError, Problem, did_you_mean, format_choices
from runner.matrix.cells import Cell, override
from runner.matrix.expand import Expansion, expand
from runner.matrix.schema import LoadedMatrix
from runner.matrix.yaml_lines import Path_
from runner.recipe import Composer, Recipe, UnknownRecipe
from runner.search.probes import distribution_hint, probe_cells


def _type_problem(current: Any, new: Any) -> str | None:
    """Why ``new`` can't replace ``current`` in the config, or None when it can."""
    if current is None:
        return None
    expected: tuple[type, ...]
    if isinstance(current, bool):
        expected, name = (bool,), "a boolean"
    elif isinstance(current, int):
        expected, name = (int,), "an integer"
    elif isinstance(current, float):
        expected, name = (int, float), "a number"
    elif isinstance(current, str):
        expected, name = (str,), "a string"
    elif isinstance(current, (list, ListConfig)):
        expected, name = (list,), "a list"
    elif isinstance(current, (dict, DictConfig)):
        expected, name = (dict,), "a mapping"
    else:
        return None
    if new is None:
        return None
    if isinstance(new, bool) and bool not in expected:
        return f"expected {name} (like {current!r}), got {new!r}"
    if not isinstance(new, expected):
        hint = ""
        if isinstance(new, str) and expected == (int, float):
            hint = " (quoted in the YAML?)"
        return f"expected {name} (like {current!r}), got {type(new).__name__} {new!r}{hint}"
    return None


def _lookup(cfg: DictConfig, key: str) -> tuple[bool, Any, list[str]]:
    """(exists, current value, sibling keys at the deepest level reached)."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            siblings = [str(k) for k in node] if isinstance(node, DictConfig) else []
            prefix = ".".join(parts[:i])
            return False, None, [f"{prefix}.{s}" if prefix else s for s in siblings]
        value = node._get_node(part)
        node = (
            value
            if isinstance(value, (DictConfig, ListConfig))
            else (None if value._is_missing() else value._value())
        )
    return True, node, []


class _Collector:
    def __init__(self, m: LoadedMatrix) -> None:
        self.m = m
        self.problems: dict[tuple[Path_, str], Problem] = {}

    def add(self, path: Path_, message: str) -> None:
        self.problems.setdefault((path, message), self.m.problem(path, message))


def _value_path(m: LoadedMatrix, cell: Cell, key: str) -> Path_:
    special = _search_path(m, cell, key)
    if special is not None:
        return special
    if cell.include_index is not None:
        return ("include", cell.include_index, key)
    values = m.spec.axes.get(key, [])
    for i, v in enumerate(values):
        if type(v) is type(cell.values[key]) and v == cell.values[key]:
            return ("axes", key, i)
    return ("axes", key)


def _check_base(m: LoadedMatrix, recipe: Recipe, out: _Collector) -> None:
    for i, item in enumerate(m.spec.base):
        key, eq, value = item.lstrip("+~").partition("=")
        if not eq:
            out.add(("base", i), f"expected a Hydra override 'key=value', got {item!r}")
        elif key in recipe.groups and value not in recipe.groups[key]:
            out.add(
                ("base", i),
                f"unknown {key} choice {value!r}; valid choices: "
                f"{format_choices(recipe.groups[key])}{did_you_mean(value, recipe.groups[key])}",
            )


def _search_path(m: LoadedMatrix, cell: Cell, key: str) -> Path_ | None:
    """Where a searched key or a restart axis of a probe cell is written."""
    if m.spec.search is not None and key in m.spec.search.space:
        return ("search", "space", key)
    if m.spec.restarts is not None and key in m.spec.restarts.axes:
        for i, v in enumerate(m.spec.restarts.axes[key]):
            if type(v) is type(cell.values[key]) and v == cell.values[key]:
                return ("restarts", "axes", key, i)
        return ("restarts", "axes", key)
    return None


def _key_path(m: LoadedMatrix, cell: Cell, key: str) -> Path_:
    special = _search_path(m, cell, key)
    if special is not None:
        return special[:3]
    if cell.include_index is not None:
        return ("include", cell.include_index, key)
    return ("axes", key)


def _check_cells(m: LoadedMatrix, recipe: Recipe, cells: Iterable[Cell], out: _Collector) -> None:
    groups = recipe.groups
    # key -> (path, combos where it is missing, combos where it exists, sibling suggestions)
    missing: dict[str, tuple[Path_, set[str], set[str], list[str]]] = {}
    with Composer(recipe) as composer:
        base_cfg = composer.compose(m.spec.base)
        if isinstance(base_cfg, Exception):
            out.add(("base",), f"Hydra cannot compose the base overrides: {base_cfg}")
            return
        top_level = [str(k) for k in base_cfg]
        lookups: dict[tuple[int, str], tuple[bool, Any, list[str]]] = {}
        type_ok: set[tuple[int, str, type]] = set()
        for cell in cells:
            group_overrides: list[str] = []
            bad_keys: set[str] = set()
            for key, value in cell.values.items():
                if key in groups:
                    if not isinstance(value, str) or value not in groups[key]:
                        out.add(
                            _value_path(m, cell, key),
                            f"unknown {key} choice {value!r}; valid choices: "
                            f"{format_choices(groups[key])}{did_you_mean(value, groups[key])}",
                        )
                    else:
                        group_overrides.append(override(key, value))
                elif "." not in key and key not in top_level:
                    bad_keys.add(key)
                    out.add(
                        _key_path(m, cell, key),
                        f"'{key}' is neither a config group ({format_choices(groups)}) nor "
                        f"a top-level config key{did_you_mean(key, [*groups, *top_level])}",
                    )
            # With a bad group choice, still check the other keys (against that group's
            # default) so that every problem is reported in one go.
            cfg = composer.compose([*m.spec.base, *group_overrides])
            if isinstance(cfg, Exception):
                out.add(
                    _key_path(m, cell, next(iter(cell.values))),
                    f"Hydra cannot compose this cell: {cfg}",
                )
                continue
            chosen = ", ".join(group_overrides) or "the defaults"
            for key, value in cell.values.items():
                if key in groups or key in bad_keys:
                    continue
                # 10k cells share a few compositions: look each key up once per composition.
                found = lookups.get((id(cfg), key))
                if found is None:
                    found = lookups[(id(cfg), key)] = _lookup(cfg, key)
                exists, current, siblings = found
                entry = missing.setdefault(key, (_key_path(m, cell, key), set(), set(), []))
                if not exists:
                    entry[1].add(chosen)
                    entry[3][:] = siblings
                    continue
                entry[2].add(chosen)
                type_key = (id(cfg), key, type(value))
                why = None if type_key in type_ok else _type_problem(current, value)
                if why is None and not isinstance(value, (list, dict)):
                    type_ok.add(type_key)
                if why:
                    out.add(_value_path(m, cell, key), why + distribution_hint(m, key, current))
    for key, (path, absent, present, siblings) in missing.items():
        if not absent:
            continue
        if present:
            out.add(
                path,
                f"'{key}' is not in the config composed for "
                f"{'; '.join(sorted(absent))} (it exists for {'; '.join(sorted(present))})",
            )
        else:
            out.add(
                path, f"'{key}' is not a key of the recipe's config{did_you_mean(key, siblings)}"
            )


def validate_matrix(m: LoadedMatrix) -> tuple[Recipe, Expansion]:
    """Expand and validate ``m``; raise MatrixError listing every problem found."""
    try:
        recipe = Recipe.load(m.spec.recipe)
    except UnknownRecipe as exc:
        raise MatrixError(m.file, [m.problem(("recipe",), str(exc))]) from None
    expansion = expand(m, set(recipe.groups))
    out = _Collector(m)
    _check_base(m, recipe, out)
    if not out.problems:
        cells = expansion.cells
        if m.spec.search is not None or m.spec.restarts is not None:
            cells = probe_cells(m, cells, set(recipe.groups))
        _check_cells(m, recipe, cells, out)
    for i, pattern in enumerate([*m.spec.exclude]):
        for key in pattern:
            if key not in m.spec.axes:
                out.add(
                    ("exclude", i, key),
                    f"'{key}' is not an axis; axes: "
                    f"{format_choices(m.spec.axes)}{did_you_mean(key, m.spec.axes)}",
                )
    if out.problems:
        raise MatrixError(m.file, sorted(out.problems.values(), key=lambda p: (p.line or 0, p.key)))
    return recipe, expansion
