"""Check a matrix against its recipe before anything runs.

Every axis value that names a config-group choice must exist; every dotted key must exist
in the config composed for that cell's group choices, with a value of a compatible type.
Each problem points at the matrix line that caused it, with the valid choices.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import MatrixError, Problem, did_you_mean, format_choices
from runner.matrix import base_check, cache, data_check
from runner.matrix.cells import Cell, override
from runner.matrix.config_keys import hydra_message, lookup, type_problem
from runner.matrix.expand import Expansion, expand
from runner.matrix.name_check import template_names
from runner.matrix.schema import LoadedMatrix
from runner.matrix.search_probes import distribution_hint, probe_cells
from runner.matrix.yaml_lines import Path_
from runner.recipe import Composer, Recipe, UnknownRecipe


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


def _group_overrides(cell: Cell, groups: dict[str, list[str]]) -> list[str]:
    """The cell's valid group choices (a bad one is reported, and its default checked)."""
    return [
        override(k, v)
        for k, v in cell.values.items()
        if k in groups and isinstance(v, str) and v in groups[k]
    ]


class _Checker:
    """The checks that need the recipe's configs, over one Hydra context."""

    def __init__(self, m: LoadedMatrix, recipe: Recipe, composer: Composer, out: _Collector):
        self.m, self.recipe, self.composer, self.out = m, recipe, composer, out
        self.groups = recipe.groups
        self.items = base_check.parse_base(m, self.groups, out.add, recipe.unknown_choice)
        self._drop_reported()
        self.base_groups = [m.spec.base[it.index] for it in self.items if it.group]
        # base index -> (key, the choices it is missing for, siblings)
        self.deferred: dict[int, tuple[str, set[str], list[str]]] = {}
        self.composed: list[Cell] = []  # a cell per composition that worked

    def _drop_reported(self) -> None:
        """Cells are composed without the base overrides already reported, so that their
        own problems are found in the same run."""
        bad = {p[1] for p, _ in self.out.problems if len(p) > 1 and p[0] == "base"}
        self.items = [it for it in self.items if it.index not in bad]
        self.base = [self.m.spec.base[it.index] for it in self.items]

    def config(self, cell: Cell) -> DictConfig | Exception:
        return self.composer.compose([*self.base, *_group_overrides(cell, self.groups)])

    def check_base(self) -> DictConfig | None:
        """The base's dotted keys against its group choices composed; that config."""
        cfg = self.composer.compose(self.base_groups)
        if isinstance(cfg, Exception):
            self.out.add(("base",), f"Hydra cannot compose the base: {hydra_message(cfg)}")
            return None
        varied = base_check.varied_groups(self.m, self.groups)
        base_check.check_keys(self.items, cfg, varied, self.out.add)
        self._drop_reported()
        return cfg

    def _choice(self, cell: Cell, key: str) -> str:
        """The cell's choice of the group ``key`` is under (what decides whether it exists)."""
        head = key.split(".")[0]
        return override(head, cell.values[head]) if head in cell.values else f"{head} default"

    def refused(self, cell: Cell, cfg: Exception) -> None:
        """Why Hydra refused a cell: a base key its choices lack, else Hydra's own words."""
        overrides = _group_overrides(cell, self.groups)
        plain = self.composer.compose([*self.base_groups, *overrides])
        missing = base_check.missing_in(self.items, plain) if isinstance(plain, DictConfig) else []
        for item, siblings in missing:
            entry = self.deferred.setdefault(item.index, (item.key, set(), siblings))
            entry[1].add(self._choice(cell, item.key))
        if missing:
            return
        first = next(iter(cell.values), None)
        self.out.add(
            _key_path(self.m, cell, first) if first is not None else ("base",),
            f"Hydra cannot compose this cell: {hydra_message(cfg)}",
        )

    def check_cells(self, base_cfg: DictConfig, cells: Iterable[Cell]) -> None:
        m, groups, out = self.m, self.groups, self.out
        # key -> (path, combos where it is missing, combos where it exists, siblings)
        missing: dict[str, tuple[Path_, set[str], set[str], list[str]]] = {}
        top_level = [str(k) for k in base_cfg]
        lookups: dict[tuple[int, str], tuple[bool, Any, list[str]]] = {}
        type_ok: set[tuple[int, str, type]] = set()
        refused: set[int] = set()
        lookups_seen: set[int] = set()
        for cell in cells:
            bad_keys: set[str] = set()
            for key, value in cell.values.items():
                if key in groups:
                    if not isinstance(value, str) or value not in groups[key]:
                        out.add(_value_path(m, cell, key), self.recipe.unknown_choice(key, value))
                elif "." not in key and key not in top_level:
                    bad_keys.add(key)
                    out.add(
                        _key_path(m, cell, key),
                        f"'{key}' is neither a config group ({format_choices(groups)}) nor "
                        f"a top-level config key{did_you_mean(key, [*groups, *top_level])}",
                    )
            # With a bad group choice, still check the other keys (against that group's
            # default) so that every problem is reported in one go.
            cfg = self.config(cell)
            if isinstance(cfg, Exception):
                if id(cfg) not in refused:
                    refused.add(id(cfg))
                    self.refused(cell, cfg)
                continue
            if id(cfg) not in lookups_seen:
                lookups_seen.add(id(cfg))
                self.composed.append(cell)
            chosen = ", ".join(_group_overrides(cell, groups)) or "the defaults"
            for key, value in cell.values.items():
                if key in groups or key in bad_keys:
                    continue
                # 10k cells share a few compositions: look each key up once per composition.
                found = lookups.get((id(cfg), key))
                if found is None:
                    found = lookups[(id(cfg), key)] = lookup(cfg, key)
                exists, current, siblings = found
                entry = missing.setdefault(key, (_key_path(m, cell, key), set(), set(), []))
                if not exists:
                    entry[1].add(chosen)
                    entry[3][:] = siblings
                    continue
                entry[2].add(chosen)
                type_key = (id(cfg), key, type(value))
                why = None if type_key in type_ok else type_problem(current, value)
                if why is None and not isinstance(value, (list, dict)):
                    type_ok.add(type_key)
                if why:
                    out.add(_value_path(m, cell, key), why + distribution_hint(m, key, current))
        for index, (key, absent, siblings) in self.deferred.items():
            present = {self._choice(c, key) for c in self.composed} - absent
            out.add(("base", index), base_check.missing_message(key, absent, present, siblings))
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
                    path,
                    f"'{key}' is not a key of the recipe's config{did_you_mean(key, siblings)}",
                )


def _check_exclude(m: LoadedMatrix, out: _Collector) -> None:
    for i, pattern in enumerate(m.spec.exclude):
        for key in pattern:
            if key not in m.spec.axes:
                out.add(
                    ("exclude", i, key),
                    f"'{key}' is not an axis; axes: "
                    f"{format_choices(m.spec.axes)}{did_you_mean(key, m.spec.axes)}",
                )


def _named(
    expansion: Expansion, names: dict[str, str], configs: dict[tuple[str, ...], Any]
) -> Expansion:
    cells = [
        Cell(c.id, c.values, c.overrides, names[c.id], c.origin, c.tags) if names else c
        for c in expansion.cells
    ]
    return Expansion(cells, expansion.warnings, configs)


def _data_configs(
    m: LoadedMatrix, composer: Composer, cells: list[Cell]
) -> dict[tuple[str, ...], Any]:
    """The configs the data check reads, composed in this Hydra context (one more
    composition here costs less than a fresh context later, and none once remembered)."""
    out = {}
    for overrides in data_check.data_sets(list(m.spec.base), cells):
        cfg = composer.compose(list(overrides))
        if isinstance(cfg, DictConfig):
            out[overrides] = OmegaConf.to_container(cfg, resolve=False)
    return out


def validate_matrix(m: LoadedMatrix, cache_dir: Path | None = None) -> tuple[Recipe, Expansion]:
    """Expand and validate ``m``; raise MatrixError listing every problem found.

    ``cache_dir``: the matrix's sweep directory, where a verdict is remembered
    (:mod:`runner.matrix.cache`) so that a matrix validated before is not composed again.
    """
    try:
        recipe = Recipe.load(m.spec.recipe)
    except UnknownRecipe as exc:
        raise MatrixError(m.file, [m.problem(("recipe",), str(exc))]) from None
    expansion = expand(m, set(recipe.groups))
    ids = [c.id for c in expansion.cells]
    key = cache.fingerprint(m, recipe, ids) if cache_dir is not None else ""
    if cache_dir is not None:
        known = cache.read(cache_dir, key)
        if known is not None and (
            not m.spec.run_name or all(c.id in known.names for c in expansion.cells)
        ):
            return recipe, _named(expansion, known.names, known.configs)
    out = _Collector(m)
    names: dict[str, str] = {}
    configs: dict[tuple[str, ...], Any] = {}
    with Composer(recipe) as composer:
        checker = _Checker(m, recipe, composer, out)
        base_cfg = checker.check_base()
        if base_cfg is not None:
            cells = expansion.cells
            if m.spec.search is not None or m.spec.restarts is not None:
                cells = probe_cells(m, cells, set(recipe.groups))
            checker.check_cells(base_cfg, cells)
            if m.spec.run_name and not out.problems:
                names = template_names(
                    m,
                    expansion.cells,
                    recipe.groups,
                    recipe.default_choices,
                    checker.config,
                    out.add,
                )
            if not out.problems:
                configs = _data_configs(m, composer, expansion.cells)
    _check_exclude(m, out)
    if out.problems:
        raise MatrixError(m.file, sorted(out.problems.values(), key=lambda p: (p.line or 0, p.key)))
    if cache_dir is not None:
        cache.write(cache_dir, key, cache.Verdict(names, configs))
    return recipe, _named(expansion, names, configs)
