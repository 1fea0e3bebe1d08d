"""Run names from a ``run_name`` template: the names a group already uses, not the runner's.

``run_name: "{model}_b{training.batch_size}_{optimizer}{optimizer.lr}_{scheduler}"`` names
each cell by filling every ``{key}`` with that cell's value of ``key``:

- an axis or ``include`` key: the cell's own value;
- any other key of the recipe's config (``training.amp``, a key ``base`` sets): its value in
  the config composed for the cell (base + the cell's group choices), so a cell of an
  ``include`` without ``training.batch_size`` shows the default it trains with.

Values read as in the default names (:func:`runner.matrix.cells.format_value`): ``1e-3``
rather than ``0.001``, ``on``/``off``, ``none``, a labelled value its label, a long or nested
value its derived label; strings keep ``_``. Template text is letters, digits and
``_ . + - =``. ``{key:spec}`` spells the value another way:

- a simple Python number spec on the raw value: ``{optimizer.lr:.0e}`` -> ``1e-04``;
- ``*N:SPEC``, the value times N, then the number spec (``d`` rounds to an integer first):
  ``{optimizer.weight_decay:*100:02d}`` -> ``00``, ``{loss.dice_weight:*10:02d}`` -> ``01``;
- ``exp``: the exponent without its sign, as the MedSegDiff group writes learning rates:
  ``{optimizer.lr:exp}`` -> ``1e4`` for 1e-4, ``5e5`` for 5e-5, ``2.5e4`` for 2.5e-4;
- ``K``: thousands, where whole: ``{training.max_steps:K}`` -> ``500K`` (1500 stays 1500);
- ``upper`` / ``lower``: the rendered value's case: ``amp{training.amp:upper}`` -> ``ampBF16``.

``{started}`` (opt in) is the time the cell first starts, ``YYYY-MM-DD_HH-MM-SS`` in the
local time of the job's host (the group's timestamp): it is not known at plan time, so
``plan``/``status`` show the name with ``{started}`` in it until the cell starts; then the
job fills it in when it creates the cell's MLflow run, the ledger records that name once
(``cells/<id>/run_name``), and a resumed or requeued cell keeps its run and so its name.
Names must be unique without it.

The names must be unique: a template that gives two cells the same name is an error that
lists them and the keys that tell them apart (a silent ``_<hash>`` suffix would break the
convention the template exists for). Searched keys can't be placeholders: a trial's name is
its grid point's name with the trial's number and sampled values appended.
"""

from __future__ import annotations

import math
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.matrix.cells import Cell, Labels, format_value, label_of

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
_LITERAL = re.compile(r"^[A-Za-z0-9_.+=-]*$")
_SPEC = re.compile(r"^[0-9]{0,2}(\.[0-9]{1,2})?[deEfFgG%]?$")
_SCALED = re.compile(r"^\*([0-9]+(\.[0-9]+)?):(.*)$")
WORD_SPECS = ("exp", "K", "upper", "lower")
#: The opt-in placeholder for the cell's first start (module doc).
STARTED = "started"
STARTED_FIELD = "{" + STARTED + "}"
STARTED_FORMAT = "%Y-%m-%d_%H-%M-%S"
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
        if key == STARTED and spec:
            raise ValueError("{started} takes no format spec: it reads YYYY-MM-DD_HH-MM-SS")
        if spec and not _valid_spec(spec):
            raise ValueError(
                f"format spec {spec!r} of {{{key}}} in run_name: a simple number spec such "
                "as '.0e', '.3g', '03d', '*N:' before one ('*100:02d'), or one of "
                f"{', '.join(WORD_SPECS)}"
            )
        fields.append(Field(literal, key, spec or ""))
    if not any(f.key and f.key != STARTED for f in fields):
        raise ValueError(
            "the run_name template has no placeholder but {started}: every cell would be "
            "named alike"
        )
    return fields


def _valid_spec(spec: str) -> bool:
    scaled = _SCALED.match(spec)
    if scaled:
        return bool(_SPEC.match(scaled.group(3))) and bool(scaled.group(3))
    return spec in WORD_SPECS or bool(_SPEC.match(spec))


def template_keys(text: str) -> list[str]:
    """The config keys a template reads (``{started}`` is not one)."""
    return list(dict.fromkeys(f.key for f in parse_template(text) if f.key and f.key != STARTED))


def fill_started(name: str, when: float) -> str:
    """``name`` with ``{started}`` replaced by ``when`` (seconds since the epoch), local time."""
    return name.replace(STARTED_FIELD, time.strftime(STARTED_FORMAT, time.localtime(when)))


def exp_spelling(value: float) -> str:
    """``1e-4`` -> ``1e4``, ``2.5e-4`` -> ``2.5e4``, ``1e4`` -> ``1e+4``: the mantissa's
    shortest form and the exponent's digits (the MedSegDiff group's learning rates)."""
    if value == 0 or not math.isfinite(value):
        return format_value(value)
    exponent = math.floor(math.log10(abs(value)))
    mantissa = f"{value / 10**exponent:.6f}".rstrip("0").rstrip(".")
    return f"{mantissa}e{abs(exponent)}" if exponent < 0 else f"{mantissa}e+{exponent}"


def _thousands(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"format spec 'K' needs a whole number, got {value!r}")
    n = int(value)
    return f"{n // 1000}K" if n >= 1000 and n % 1000 == 0 else str(n)


def render_value(key: str, value: Any, spec: str, labels: Labels | None) -> str:
    """One placeholder's text; ValueError when the spec does not fit the value."""
    if spec in ("upper", "lower"):
        text = render_value(key, value, "", labels)
        return text.upper() if spec == "upper" else text.lower()
    if spec == "K":
        return _thousands(value)
    if spec:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"format spec {spec!r} needs a number, got {value!r}")
        if spec == "exp":
            return exp_spelling(float(value))
        scaled = _SCALED.match(spec)
        if scaled:
            value, spec = value * float(scaled.group(1)), scaled.group(3)
            value = round(value) if spec.endswith("d") else value
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
        if f.key == STARTED:
            out.append(STARTED_FIELD)  # filled in when the cell first starts
        elif f.key is not None:
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
