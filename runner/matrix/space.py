"""Search spaces: one distribution per dotted key, written as a call in the matrix.

``uniform(a, b)``, ``int_uniform(a, b)`` (both ends included), ``loguniform(a, b)`` and
``choice(v1, v2, ...)`` (a value may be a list: ``choice([0.5, 1], [1, 1])``). Parsing is
strict (every problem says what is valid); sampling a slot is a pure function of the seed,
the study and the slot number, so the same matrix gives the same trials on any machine and
raising ``trials`` later only adds slots. Optuna sees the same distributions (choices that
are not plain scalars travel as their JSON text, which Optuna's categorical accepts).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import yaml

from runner.errors import did_you_mean, format_choices
from runner.matrix.yaml_lines import load_value

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

KINDS = ("uniform", "int_uniform", "loguniform", "choice")
USAGE = "uniform(a, b), int_uniform(a, b), loguniform(a, b) or choice(v1, v2, ...)"
_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Dist:
    """One parsed distribution. ``args``: the bounds, or the choices."""

    kind: str
    args: tuple[Any, ...]

    @property
    def low(self) -> float:
        return self.args[0]

    @property
    def high(self) -> float:
        return self.args[1]

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        if self.kind == "int_uniform":
            return rng.randint(int(self.low), int(self.high))
        return _copy(rng.choice(self.args))

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(_same(value, c) for c in self.args)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int_uniform" and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "uniform":
            return FloatDistribution(float(self.low), float(self.high))
        if self.kind == "loguniform":
            return FloatDistribution(float(self.low), float(self.high), log=True)
        if self.kind == "int_uniform":
            return IntDistribution(int(self.low), int(self.high))
        return CategoricalDistribution([encode(c) for c in self.args])

    def text(self) -> str:
        return f"{self.kind}({', '.join(json.dumps(a) for a in self.args)})"


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, anything else as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def decode(dist: Dist, value: Any) -> Any:
    if dist.kind != "choice":
        return value
    for c in dist.args:
        if _same(encode(c), value):
            return _copy(c)
    raise ValueError(f"{value!r} is not one of {dist.text()}")


def _same(a: Any, b: Any) -> bool:
    return json.dumps([type(a).__name__, a]) == json.dumps([type(b).__name__, b])


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value)) if isinstance(value, (list, dict)) else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@lru_cache(maxsize=4096)
def parse(text: str) -> Dist:
    """``'loguniform(1e-4, 4e-2)'`` -> Dist; ValueError saying what is valid otherwise."""
    match = _CALL.match(text)
    if not match:
        raise ValueError(f"expected a distribution: {USAGE}")
    kind, inner = match.group(1), match.group(2)
    if kind not in KINDS:
        raise ValueError(
            f"unknown distribution '{kind}'; valid: {format_choices(KINDS)}"
            f"{did_you_mean(kind, KINDS)}"
        )
    try:
        args = load_value(f"[{inner}]")
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot read the arguments of {kind}(...): {first}") from None
    if not isinstance(args, list):
        raise ValueError(f"cannot read the arguments of {kind}(...)")
    if kind == "choice":
        return _parse_choice(args)
    if len(args) != 2:
        raise ValueError(f"{kind}(a, b) takes two bounds, not {len(args)} argument(s)")
    low, high = args
    if kind == "int_uniform":
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in args):
            raise ValueError("int_uniform(a, b) takes two integers")
    elif not (_number(low) and _number(high)):
        raise ValueError(f"{kind}(a, b) takes two finite numbers")
    if low >= high:
        raise ValueError(f"the low bound {low!r} must be below the high bound {high!r}")
    if kind == "loguniform" and low <= 0:
        # W&B accepts {min: 0, log: true} (and the hydra-lv sweep writes it for the weight
        # decay); a log has no 0, so say what to write instead.
        raise ValueError(
            f"loguniform(a, b) samples between log(a) and log(b), so a must be > 0, got "
            f"{low!r}: write uniform({low!r}, {high!r}) to sample from {low!r} on, or give a "
            f"positive low bound, e.g. loguniform({_positive_low(high)!r}, {high!r})"
        )
    return Dist(kind, (low, high))


def _positive_low(high: float) -> float:
    """A suggested positive low bound: four decades below ``high`` (as runner import
    writes for a W&B log range from 0)."""
    return float(f"{high * 1e-4:.3g}")


def _parse_choice(args: list[Any]) -> Dist:
    if len(args) < 2:
        raise ValueError("choice(...) needs at least two values (a single value belongs in base)")
    seen: set[str] = set()
    for value in args:
        if isinstance(value, dict):
            raise ValueError("choice values are scalars or lists, not mappings")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"choice value {value!r} is not a finite number")
        key = json.dumps([type(value).__name__, value])
        if key in seen:
            raise ValueError(f"duplicate choice {value!r}")
        seen.add(key)
    return Dist("choice", tuple(args))


def check(text: Any) -> str:
    """Validate a space entry as the matrix gives it; return it unchanged (for pydantic)."""
    if not isinstance(text, str):
        raise ValueError(
            f"expected a distribution: {USAGE} (a list of values is written choice(a, b, ...))"
        )
    parse(text)
    return text


class Space:
    """The parsed ``search.space``, in the matrix's key order."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        self.dists: dict[str, Dist] = {k: parse(v) for k, v in entries.items()}

    def names(self) -> list[str]:
        return list(self.dists)

    def sample(self, seed_text: str) -> dict[str, Any]:
        """The values of one slot: a pure function of ``seed_text`` (seed, study, slot)."""
        digest = hashlib.sha256(seed_text.encode()).hexdigest()
        rng = random.Random(int(digest[:16], 16))
        return {k: d.sample(rng) for k, d in self.dists.items()}

    def grid(self, seed: int) -> list[dict[str, Any]]:
        """Every combination of the choices, in an order shuffled by ``seed`` (as Optuna's
        GridSampler visits them): the first N trials are a random subset of the grid."""
        points = [
            dict(zip(self.dists, combo, strict=True))
            for combo in itertools.product(*(d.args for d in self.dists.values()))
        ]
        random.Random(seed).shuffle(points)
        return [{k: _copy(v) for k, v in p.items()} for p in points]

    def grid_size(self) -> int:
        return math.prod(len(d.args) for d in self.dists.values())

    def to_optuna(self) -> dict[str, BaseDistribution]:
        return {k: d.to_optuna() for k, d in self.dists.items()}

    def encode(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: encode(values[k]) for k in self.dists}

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: decode(d, params[k]) for k, d in self.dists.items()}

    def fingerprint(self) -> str:
        return json.dumps({k: d.text() for k, d in self.dists.items()})


def rounded(value: Any, digits: int = 3) -> Any:
    """A sampled float with ``digits`` significant digits, for run names and tables."""
    if isinstance(value, float) and value != 0 and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value
