"""Run names from a ``run_name`` template: the names a group already uses, not the runner's.

``run_name: "{model}_b{training.batch_size}_{optimizer}{optimizer.lr}_{scheduler}"`` names
each cell by filling every ``{key}`` with that cell's value of ``key``:

- an axis or ``include`` key: the cell's own value;
- any other key of the recipe's config (``training.amp``, a key ``base`` sets): its value in
  the config composed for the cell (base + the cell's group choices), so a cell of an
  ``include`` without ``training.batch_size`` shows the default it trains with.

Values read as in the default names (:func:`runner.matrix.cells.format_value`): ``1e-3``
rather than ``0.001``, ``on``/``off``, ``none``, a labelled value its label, a long or nested
value its derived label; strings keep ``_``. ``{key:spec}`` applies a simple Python format
spec to the raw value (``{optimizer.lr:.0e}`` -> ``1e-04``). Template text is letters,
digits and ``_ . + - =``.

The names must be unique: a template that gives two cells the same name is an error that
lists them and the keys that tell them apart (a silent ``_<hash>`` suffix would break the
convention the template exists for). Searched keys can't be placeholders: a trial's name is
its grid point's name with the trial's number and sampled values appended.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.matrix.cells import Cell, Labels, format_value, label_of

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
_LITERAL = re.compile(r"^[A-Za-z0-9_.+=-]*$")
_SPEC = re.compile(r"^[0-9]{0,2}(\.[0-9]{1,2})?[deEfFgG%]?$")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,39}$")
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Field:
    literal: str  # the text before the placeholder
    key: str | None  # None: the trailing text
    spec: str


def parse_template(text: str) -> list[Field]:
    """The template's parts; ValueError saying what is wrong with it."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"invalid run_name template {text!r}: {exc}") from None
    fields: list[Field] = []
    for literal, key, spec, conversion in parsed:
        if not _LITERAL.match(literal):
            bad = sorted({c for c in literal if not _LITERAL.match(c)})
            raise ValueError(
                f"run_name template text may use letters, digits and _ . + - = only; "
                f"got {''.join(bad)!r}"
            )
        if key is None:
            fields.append(Field(literal, None, ""))
            continue
        if not key:
            raise ValueError("empty placeholder '{}' in run_name: name a key, e.g. '{model}'")
        if conversion or not _KEY.match(key):
            raise ValueError(
                f"placeholder {{{key}{'!' + conversion if conversion else ''}}} in run_name: "
                "expected a key such as {model} or {optimizer.lr} (no [index], no !conversion)"
            )
        if spec and not _SPEC.match(spec):
            raise ValueError(
                f"format spec {spec!r} of {{{key}}} in run_name: only simple number specs "
                "such as '.0e', '.3g', '03d'"
            )
        fields.append(Field(literal, key, spec or ""))
    if not any(f.key for f in fields):
        raise ValueError(
            "the run_name template has no placeholder: every cell would be named alike"
        )
    return fields


def template_keys(text: str) -> list[str]:
    return list(dict.fromkeys(f.key for f in parse_template(text) if f.key))


def render_value(key: str, value: Any, spec: str, labels: Labels | None) -> str:
    """One placeholder's text; ValueError when the spec does not fit the value."""
    if spec:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"format spec {spec!r} needs a number, got {value!r}")
        return re.sub(r"[^A-Za-z0-9_.+-]", "", format(value, spec))
    label = label_of(key, value, labels)
    if label is not None:
        return label
    if isinstance(value, str):
        return re.sub(r"[^A-Za-z0-9_.+-]", "", value)
    return format_value(value)


def render(fields: Sequence[Field], lookup: Callable[[str], Any], labels: Labels | None) -> str:
    """The name for one cell; ``lookup`` gives a key's value (KeyError: none)."""
    out = []
    for f in fields:
        out.append(f.literal)
        if f.key is not None:
            out.append(render_value(f.key, lookup(f.key), f.spec, labels))
    return "".join(out)


def collisions(cells: Sequence[Cell], names: Mapping[str, str]) -> list[str]:
    """Messages for names the template gives to more than one cell (empty: all unique)."""
    by_name: dict[str, list[Cell]] = {}
    for c in cells:
        by_name.setdefault(names[c.id], []).append(c)
    clashes = [(n, cs) for n, cs in by_name.items() if len(cs) > 1]
    if not clashes:
        return []
    total = sum(len(cs) for _, cs in clashes)
    name, first = clashes[0]
    keys = sorted({k for c in first for k in c.values})
    differ = [k for k in keys if len({repr(c.values.get(k)) for c in first}) > 1]
    shown = "; ".join(f"{c.id} {c.values}" for c in first[:3])
    more = f" and {len(first) - 3} more" if len(first) > 3 else ""
    hint = (
        f"; add a placeholder for {', '.join('{' + k + '}' for k in differ)}"
        if differ
        else "; these cells differ only by values the template can't see"
    )
    return [
        f"the template gives {total} cells names that are not unique "
        f"({len(clashes)} repeated), e.g. {name!r} for cells {shown}{more}{hint}"
    ]
