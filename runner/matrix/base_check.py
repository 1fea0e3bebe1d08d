"""Checking ``base`` like the axes: every group choice exists, every dotted key is a key of
the recipe's config (with a 'did you mean' for a typo) and its value has a compatible type;
all problems at once, each at its line of ``base``.

A base key under a group that the cells choose (``optimizer.momentum`` with an ``optimizer``
axis) exists or not depending on the choice: it is checked against each cell's composition
(:func:`missing_in`), where Hydra's refusal is explained the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from runner.errors import did_you_mean, format_choices
from runner.matrix.config_keys import lookup, type_problem
from runner.matrix.schema import LoadedMatrix
from runner.matrix.yaml_lines import Path_

Add = Callable[[Path_, str], None]
NEW_KEY_HINT = (
    "; a key the config does not have is added with '+KEY=VALUE', and only matters if the "
    "recipe reads it"
)


@dataclass(frozen=True)
class BaseItem:
    index: int
    key: str
    kind: str  # Hydra's override type: CHANGE, ADD, FORCE_ADD, DEL
    value: Any
    group: bool  # a config-group choice (or a Hydra path such as hydra/launcher): no key check


def parse_base(
    m: LoadedMatrix,
    groups: dict[str, list[str]],
    add: Add,
    unknown: Callable[[str, Any], str] | None = None,
) -> list[BaseItem]:
    """The base overrides, parsed as Hydra parses them; syntax errors and unknown group
    choices reported through ``add`` (``unknown``: the message for an unknown choice)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    items = []
    for i, text in enumerate(m.spec.base):
        if "=" not in text and not text.startswith("~"):
            add(("base", i), f"expected a Hydra override 'key=value', got {text!r}")
            continue
        try:
            o = parser.parse_override(text)
        except OverrideParseException as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "syntax error"
            add(("base", i), f"not a valid Hydra override {text!r}: {reason}")
            continue
        key = o.key_or_group
        kind = o.type.name
        is_group = key in groups or "/" in key or o.package is not None
        value = None if kind == "DEL" else o.value()
        if (
            key in groups
            and kind != "DEL"
            and o.package is None
            and (not isinstance(value, str) or value not in groups[key])
        ):
            add(
                ("base", i),
                unknown(key, value)
                if unknown
                else f"unknown {key} choice {value!r}; valid choices: "
                f"{format_choices(groups[key])}{did_you_mean(value, groups[key])}",
            )
        items.append(BaseItem(i, key, kind, value, is_group))
    return items


def varied_groups(m: LoadedMatrix, groups: dict[str, list[str]]) -> set[str]:
    """Groups whose choice differs between cells: keys under them are checked per cell."""
    spec = m.spec
    keys = set(spec.axes)
    for extra in spec.include:
        keys.update(extra)
    if spec.search is not None:
        keys.update(spec.search.space)
    if spec.restarts is not None:
        keys.update(spec.restarts.axes)
    return {k for k in keys if k in groups}


def _missing(key: str, siblings: list[str]) -> str:
    hint = did_you_mean(key, siblings)
    return f"'{key}' is not a key of the recipe's config{hint or NEW_KEY_HINT}"


def check_keys(items: list[BaseItem], cfg: DictConfig, varied: set[str], add: Add) -> None:
    """Each dotted base key against ``cfg`` (the base's group choices composed); keys under
    a group the cells choose wait for the cells' own compositions."""
    for it in items:
        if it.group or it.kind == "FORCE_ADD":
            continue
        exists, current, siblings = lookup(cfg, it.key)
        under_varied = it.key.split(".")[0] in varied
        path = ("base", it.index)
        if it.kind == "ADD":
            if exists:
                add(path, f"'{it.key}' is already in the recipe's config: drop the '+' to set it")
        elif not exists:
            if not under_varied:
                add(path, _missing(it.key, siblings))
        elif not under_varied and not (isinstance(it.value, str) and "${" in it.value):
            why = type_problem(current, it.value)
            if why:
                add(path, why)


def missing_in(items: list[BaseItem], cfg: DictConfig) -> list[tuple[BaseItem, list[str]]]:
    """Base keys that ``cfg`` (one cell's choices composed, without the base's keys) lacks,
    with their siblings: why Hydra refused to compose that cell."""
    out = []
    for it in items:
        if it.group or it.kind in ("FORCE_ADD", "ADD"):
            continue
        exists, _, siblings = lookup(cfg, it.key)
        if not exists:
            out.append((it, siblings))
    return out


def missing_message(key: str, absent: set[str], present: set[str], siblings: list[str]) -> str:
    where = f"'{key}' is not in the config composed for {', '.join(sorted(absent))}"
    if present:
        return f"{where} (it exists for {', '.join(sorted(present))})"
    return where + did_you_mean(key, siblings)
