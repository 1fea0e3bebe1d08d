"""What every importer reads a source sweep into: its parameters, method, metric and pruner,
in the source's own names, plus the notes the conversion made on the way.

The importers (:mod:`.wandb`, :mod:`.orion`, :mod:`.hydra_multirun`) fill a :class:`Sweep`;
:mod:`.keymap` maps its keys to the recipe's and :mod:`.render` writes the matrix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from runner.errors import RunnerError, printable

Kind = Literal["grid", "dist", "fixed", "fidelity"]


class ImportProblem(RunnerError):
    """A source that can't be imported: one line naming the file, line and key (exit 2)."""

    def __init__(self, source: str, message: str, line: int | None = None, key: str = "") -> None:
        self.source, self.message, self.line, self.key = source, message, line, key
        where = f"{source}:{line}" if line else source
        super().__init__(printable(f"{where}:{f' {key}:' if key else ''} {message}"))

    def at(self, line: int | None) -> ImportProblem:
        """The same problem, located at ``line`` (when it had none)."""
        if self.line or not line:
            return self
        return ImportProblem(self.source, self.message, line, self.key)


@dataclass
class Param:
    """One source parameter. ``grid``/``fixed``: ``values``; ``dist``: ``dist``, a runner
    distribution (``loguniform(0.0001, 0.01)``); ``fidelity``: ``values`` = [low, high, base]."""

    key: str
    kind: Kind
    values: list[Any] = field(default_factory=list)
    dist: str | None = None
    #: what the source wrote, for the comments (``{min: 0.0, max: 0.1, log: true}``)
    source: str = ""
    #: why the conversion is not exact (``!`` notes are also warnings)
    notes: list[str] = field(default_factory=list)


@dataclass
class Pruner:
    """ASHA over epochs: rungs at ``min_epochs * eta^k`` below ``max_epochs`` (the runner's)."""

    min_epochs: int | None
    max_epochs: int | None
    eta: int
    brackets: int = 1
    #: the source's own rungs (Orion's num_rungs spacing), when they differ from min * eta^k
    source_rungs: list[int] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    """A sweep as the source tool defines it (keys still in the source's names)."""

    source: str  # the file, or "command line"
    format: str  # wandb | orion | hydra
    params: list[Param]
    method: Literal["grid", "random", "tpe", "gp"] = "grid"
    method_note: str = ""
    name: str | None = None
    trials: int | None = None
    seed: int | None = None
    metric: str | None = None
    goal: Literal["max", "min"] | None = None
    #: a metric whose goal is implied (Orion minimises what it is given: ``-dice``)
    metric_note: str = ""
    pruner: Pruner | None = None
    notes: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.notes.append(text)


# --- values as the matrix writes them ------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./+-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none", "~"}


def yaml_value(value: Any) -> str:
    """A value in YAML flow style: plain words unquoted, everything else as JSON (a subset of
    YAML 1.2, which is how the runner reads numbers such as ``1e-05``)."""
    if isinstance(value, str):
        plain = _PLAIN.match(value) and value.lower() not in _YAML_WORDS
        return value if plain else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{yaml_value(str(k))}: {yaml_value(v)}" for k, v in value.items())
            + "}"
        )
    return number(value) if isinstance(value, float) else json.dumps(value)


def number(value: float) -> str:
    """A float as YAML 1.2 and the distribution parser read it (``1e-05``, ``0.5``)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return json.dumps(value)


def hydra_value(value: Any) -> str:
    """A value as a Hydra override writes it (``[1.0,0.5,2.0]``, ``'a b'``)."""
    if isinstance(value, str):
        return (
            value
            if re.match(r"^[A-Za-z0-9_./:+-]+$", value)
            else "'" + value.replace("'", "\\'") + "'"
        )
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return number(value) if isinstance(value, float) else str(value)


def choice_text(values: list[Any]) -> str:
    return "choice(" + ", ".join(json.dumps(v) for v in values) + ")"
