"""Cell identity and readable run names.

A cell is one point of the matrix: the recipe plus a set of Hydra overrides.

- **id**: the first 12 hex digits of SHA-256 over the canonical JSON of the recipe and the
  sorted override strings (base + the cell's own). Key order in the YAML and the spelling of
  numbers (``1.0e-3`` vs ``0.001``) do not change it; any change of value, recipe or base does.
- **run name**: one token per varying key, in the matrix's axis order, joined with ``_``:
  a config-group choice is its name without ``_``/``-`` (``dice_ce`` -> ``dicece``); ``seed``
  becomes ``s0``; a dotted key under a group that is itself an axis is appended to that
  group's token (``optimizer.lr=1e-3`` -> ``adamw1e-3``), otherwise it is its own token made
  of the key's abbreviation and value (``training.batch_size=2`` -> ``bs2``). A value with a
  label (the axis written as ``{label: value}``) is its own token, the label; a value too long
  or too nested to spell out (a Hydra dict such as ``{decoder: 1.5, head: 2.0}``) gets a
  derived label, the key's abbreviation and 6 hex digits of its hash (``layerwise-3f2a1c``).
  Booleans are ``on``/``off``, null is ``none``. Names that still collide get ``_<id[:6]>``
  appended, so they are unique within a matrix. A ``run_name`` template replaces all of this
  (:mod:`runner.matrix.names`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z0-9_./+-]+$")


def override_value(value: Any) -> str:
    """Render a Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    # Quote anything that the grammar could read as another type or as syntax.
    if _PLAIN.match(text) and text.lower() not in {"null", "true", "false", "nan", "inf"}:
        try:
            float(text)
        except ValueError:
            return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override(key: str, value: Any) -> str:
    return f"{key}={override_value(value)}"


def cell_id(recipe: str, overrides: Sequence[str]) -> str:
    canonical = json.dumps(
        {"recipe": recipe, "overrides": sorted(overrides)}, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Cell:
    """One point of the matrix."""

    id: str
    values: dict[str, Any]  # axis or include key -> value, in axis order
    overrides: tuple[str, ...]  # the cell's own Hydra overrides (base excluded)
    run_name: str = ""
    origin: str = "axes"  # "axes" or "include[i]" (see include_origin)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def include_index(self) -> int | None:
        """i for a cell added by ``include[i]``, None for a cell of the product."""
        if not self.origin.startswith("include["):
            return None
        return int(self.origin[len("include[") : -1])


def format_number(value: float | int) -> str:
    """Compact, filename-safe number: 0.001 -> 1e-3, 0.0003 -> 3e-4, 0.5 -> 0.5, 100 -> 100."""
    if isinstance(value, (bool, int)):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return str(value)
    exponent = math.floor(math.log10(abs(value)))
    if -3 <= exponent < 5 and exponent != -3:
        return f"{value:g}"
    mantissa = f"{value / 10**exponent:.6f}".rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


def _abbrev(param: str) -> str:
    words = [w for w in re.split(r"[_\-]", param) if w]
    if len(param) <= 4 or len(words) == 1:
        return param
    return "".join(w[0] for w in words)


def format_value(value: Any) -> str:
    """A value as it reads in a run name: numbers compact, booleans on/off, null none, lists
    joined by ``x``; other characters than letters, digits, ``.+-`` dropped."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", str(value))


#: Past this many characters a value's spelled-out form stops being readable in a name.
MAX_VALUE_CHARS = 24
#: key -> value_key(value) -> label: the labels a matrix gives its axes' values.
Labels = Mapping[str, Mapping[str, str]]


def value_key(value: Any) -> str:
    """Hashable, type-aware identity of a value (1 and 1.0 and True differ)."""
    return json.dumps([type(value).__name__, value], sort_keys=True, default=str)


def _structured(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, (list, tuple, dict)) for v in value)
    # A string Hydra reads as a dict or a list (how a matrix writes a mapping today).
    return isinstance(value, str) and value.strip()[:1] in ("{", "[")


def derived_label(key: str, value: Any) -> str | None:
    """A short, stable label for a value too long or too nested to spell out in a name:
    the key's abbreviation and 6 hex digits of the value's hash; None for other values."""
    if not _structured(value) and len(format_value(value)) <= MAX_VALUE_CHARS:
        return None
    digest = hashlib.sha256(override_value(value).encode()).hexdigest()[:6]
    return f"{_abbrev(key.split('.')[-1])}-{digest}"


def label_of(key: str, value: Any, labels: Labels | None = None, derive: bool = True) -> str | None:
    """The label of ``value`` in a name: the matrix's own, else (``derive``) a derived one,
    else None."""
    own = (labels or {}).get(key)
    if own:
        found = own.get(value_key(value))
        if found is not None:
            return found
    return derived_label(key, value) if derive else None


def run_name_tokens(
    values: Mapping[str, Any], groups: set[str], labels: Labels | None = None
) -> list[str]:
    """Tokens of a run name for one cell's values (see module docstring)."""
    return _tokens(values, groups, labels, {})


def _memo_key(key: str, value: Any, attach: bool) -> tuple[Any, ...]:
    try:
        hash(value)
        return (key, type(value).__name__, value, attach)
    except TypeError:  # a list: its canonical text
        return (key, "", value_key(value), attach)


def _piece(key: str, value: Any, groups: set[str], labels: Labels | None, attach: bool) -> str:
    """One key's token, or (``attach``) the suffix it adds to its group's token."""
    param = key.partition(".")[2]
    label = label_of(key, value, labels, derive=key not in groups)
    if label is not None:
        return label
    if key == "seed":
        return f"s{format_value(value)}"
    if not param and key in groups:
        return re.sub(r"[^A-Za-z0-9]", "", str(value))
    if attach:
        return ("" if param == "lr" else _abbrev(param.split(".")[-1])) + format_value(value)
    return _abbrev(key.split(".")[-1]) + format_value(value)


def _tokens(
    values: Mapping[str, Any],
    groups: set[str],
    labels: Labels | None,
    memo: dict[tuple[Any, ...], tuple[bool, str]],
) -> list[str]:
    # 10k cells repeat a few values per key: each (key, value) is spelled out once.
    tokens: dict[str, str] = {}
    attached: list[tuple[str, str]] = []
    for key, value in values.items():
        head, _, param = key.partition(".")
        attach = bool(param) and head in values and head in groups
        mk = _memo_key(key, value, attach)
        hit = memo.get(mk)
        if hit is None:
            piece = _piece(key, value, groups, labels, attach)
            own = label_of(key, value, labels, derive=key not in groups) is not None
            hit = memo[mk] = (attach and not own, piece)
        if hit[0]:
            attached.append((head, hit[1]))
        else:
            tokens[key] = hit[1]
    for head, suffix in attached:
        tokens[head] = tokens[head] + suffix
    return [t for t in tokens.values() if t]


def assign_run_names(
    cells: Sequence[Cell], groups: set[str], labels: Labels | None = None
) -> list[Cell]:
    """Give every cell its run name, making collisions unique with an id suffix."""
    memo: dict[tuple[Any, ...], tuple[bool, str]] = {}
    names = ["_".join(_tokens(c.values, groups, labels, memo)) or c.id for c in cells]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out = []
    for c, n in zip(cells, names, strict=True):
        unique = n if counts[n] == 1 else f"{n}_{c.id[:6]}"
        out.append(Cell(c.id, c.values, c.overrides, unique, c.origin, c.tags))
    return out


def include_origin(index: int) -> str:
    """The ``origin`` of a cell added by ``include[index]``."""
    return f"include[{index}]"
