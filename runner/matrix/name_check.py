"""Checking a ``run_name`` template against the recipe and naming the cells with it (the
template's syntax and rendering: :mod:`runner.matrix.names`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.errors import did_you_mean
from runner.matrix.cells import Cell
from runner.matrix.config_keys import flat_keys, lookup
from runner.matrix.names import (
    MAX_NAME_CHARS,
    collisions,
    fill_started,
    parse_template,
    render,
    template_keys,
)
from runner.matrix.schema import LoadedMatrix
from runner.matrix.yaml_lines import Path_


def base_choices(m: LoadedMatrix, groups: Mapping[str, list[str]]) -> dict[str, str]:
    """Group -> the choice ``base`` makes (``data=isles24``)."""
    out = {}
    for item in m.spec.base:
        key, eq, value = item.partition("=")
        if eq and key in groups:
            out[key] = value
    return out


def template_names(
    m: LoadedMatrix,
    cells: Sequence[Cell],
    groups: Mapping[str, list[str]],
    defaults: Mapping[str, str],
    config_of: Callable[[Cell], Any],
    add: Callable[[Path_, str], None],
) -> dict[str, str]:
    """Each cell's name from ``m``'s template (cell id -> name); problems through ``add``,
    at the ``run_name`` line. ``config_of(cell)``: the config composed for the cell (a
    DictConfig; anything else when it could not be composed, already reported)."""
    assert m.spec.run_name is not None
    fields = parse_template(m.spec.run_name)
    path: Path_ = ("run_name",)
    searched = set(m.spec.search.space) if m.spec.search is not None else set()
    bad = [k for k in template_keys(m.spec.run_name) if k in searched]
    for key in bad:
        add(
            path,
            f"{{{key}}} is a searched key: a trial's name is its grid point's name followed "
            "by the trial's number and sampled values; leave it out of run_name",
        )
    if bad:
        return {}
    choices = {**defaults, **base_choices(m, groups)}
    own_keys = list(dict.fromkeys([*m.spec.axes, *(k for inc in m.spec.include for k in inc)]))
    found: dict[tuple[int, str], tuple[bool, Any]] = {}
    absent: dict[str, set[str]] = {}
    present: set[str] = set()
    failed: dict[str, str] = {}
    some_cfg: Any = None
    names: dict[str, str] = {}
    for cell in cells:
        cfg = config_of(cell)
        if not isinstance(cfg, DictConfig):
            continue
        some_cfg = cfg

        def value_of(key: str, cell: Cell = cell, cfg: DictConfig = cfg) -> Any:
            if key in cell.values:
                return cell.values[key]
            if key in choices:  # a group the cell does not choose: the base's or the default
                return choices[key]
            hit = found.get((id(cfg), key))
            if hit is None:
                exists, value, _ = lookup(cfg, key)
                if isinstance(value, (DictConfig, ListConfig)):
                    value = OmegaConf.to_container(value, resolve=False)
                hit = found[(id(cfg), key)] = (exists, value)
            if not hit[0]:
                chosen = ", ".join(f"{k}={v}" for k, v in cell.values.items() if k in groups)
                absent.setdefault(key, set()).add(chosen or "the defaults")
                raise KeyError(key)
            present.add(key)
            if isinstance(hit[1], str) and "${" in hit[1]:
                failed.setdefault(
                    key,
                    f"{{{key}}} is an interpolation ({hit[1]}) in the recipe's config: a run "
                    "name takes values the config sets, not ones resolved when the cell runs",
                )
            return hit[1]

        try:
            names[cell.id] = render(fields, value_of, m.labels)
        except KeyError:
            continue
        except ValueError as exc:
            failed.setdefault(str(exc), f"cannot render run_name for cell {cell.id}: {exc}")
    for message in failed.values():
        add(path, message)
    for key, combos in absent.items():
        if key in present:
            add(
                path,
                f"{{{key}}} has no value in the config composed for {'; '.join(sorted(combos))}",
            )
        else:
            known = [*own_keys, *(flat_keys(some_cfg) if some_cfg is not None else [])]
            add(
                path,
                f"unknown placeholder {{{key}}}; valid keys: the axes and include keys "
                f"({', '.join(own_keys) or 'none'}) or any key of the recipe's config"
                f"{did_you_mean(key, known)}",
            )
    if failed or absent or len(names) < len(cells):
        return {}
    # {started} becomes a 19-character time when the cell starts.
    lengths = {n: len(fill_started(n, 0.0)) for n in names.values()}
    too_long = [n for n in names.values() if lengths[n] > MAX_NAME_CHARS]
    if too_long:
        add(
            path,
            f"names up to {MAX_NAME_CHARS} characters, got {lengths[too_long[0]]}: {too_long[0]!r}",
        )
        return {}
    for message in collisions(cells, names):
        add(path, message)
    return names
