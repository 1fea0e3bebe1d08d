"""Source distributions -> the runner's (``uniform``, ``int_uniform``, ``loguniform``,
``choice``), with the checks the source tools don't make: a log range with a bound <= 0, a
range with low >= high, a distribution Optuna can't express (named, with the closest chosen).

Every function returns a :class:`Param`; notes starting with ``!`` are warnings too.
"""

from __future__ import annotations

import json
import math
from typing import Any

from runner.importers.model import ImportProblem, Param, choice_text, number

#: a quantised range with at most this many points becomes a choice of them
MAX_CHOICES = 32
#: a log range with low <= 0 starts this many decades below its high bound
LOG_DECADES = 4


def _finite(source: str, key: str, *values: Any) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ImportProblem(source, f"expected a finite number, not {v!r}", key=key)


def _ordered(source: str, key: str, low: float, high: float) -> None:
    if low >= high:
        raise ImportProblem(source, f"the range [{low}, {high}] is empty (low >= high)", key=key)


def uniform(source: str, key: str, low: Any, high: Any, written: str) -> Param:
    _finite(source, key, low, high)
    _ordered(source, key, low, high)
    return Param(
        key, "dist", dist=f"uniform({number(float(low))}, {number(float(high))})", source=written
    )


def int_uniform(source: str, key: str, low: Any, high: Any, written: str) -> Param:
    _finite(source, key, low, high)
    lo, hi = math.ceil(low), math.floor(high)
    p = Param(key, "dist", source=written)
    if (lo, hi) != (low, high):
        p.notes.append(f"integer bounds [{lo}, {hi}] of [{low}, {high}]")
    _ordered(source, key, lo, hi)
    p.dist = f"int_uniform({lo}, {hi})"
    return p


def log_uniform(source: str, key: str, low: Any, high: Any, written: str) -> Param:
    """loguniform(low, high); a bound <= 0 (``{min: 0.0, max: 0.1, log: true}``) gets
    ``LOG_DECADES`` decades below ``high`` and a warning saying what to use for 0 itself."""
    _finite(source, key, low, high)
    _ordered(source, key, low, high)
    p = Param(key, "dist", source=written)
    if high <= 0:
        raise ImportProblem(
            source, f"a log-uniform range needs bounds > 0, not [{low}, {high}]", key=key
        )
    if low <= 0:
        new_low = float(f"{high / 10**LOG_DECADES:.3g}")
        p.notes.append(
            f"! {written}: a log-uniform range can't reach {low} (it samples log(x)); wrote "
            f"{number(new_low)} = {number(float(high))} / 1e{LOG_DECADES} instead. To try "
            f"{low} itself, use uniform({number(float(low))}, {number(float(high))}) or a "
            f"choice that includes it"
        )
        low = new_low
    p.dist = f"loguniform({number(float(low))}, {number(float(high))})"
    return p


def quantized(
    source: str, key: str, low: Any, high: Any, q: Any, written: str, log: bool = False
) -> Param:
    """A range with step ``q``: int_uniform for integer steps of 1, a choice of the points
    when there are few, else the continuous range (the runner's space has no step)."""
    _finite(source, key, low, high, q)
    _ordered(source, key, low, high)
    if q <= 0:
        raise ImportProblem(source, f"the step {q} must be > 0", key=key)
    n = math.floor((high - low) / q + 1e-9) + 1
    integral = all(float(v).is_integer() for v in (low, high, q))
    if integral and q == 1 and not log:
        p = int_uniform(source, key, int(low), int(high), written)
    elif n <= MAX_CHOICES and not log:
        points = [low + i * q for i in range(n)]
        points = [int(v) if integral else float(f"{v:.12g}") for v in points]
        p = categorical(source, key, points, written)
        p.notes.append(
            f"the {n} points of step {q} as a choice (Optuna's step is not in the runner's space)"
        )
        return p
    else:
        make = log_uniform if log else uniform
        p = make(source, key, low, high, written)
        p.notes.append(
            f"! step {q} dropped: the runner's space has no quantised ranges; sampled continuously"
        )
    return p


def normal(source: str, key: str, mu: Any, sigma: Any, written: str, log: bool = False) -> Param:
    """No normal in the runner's space (nor a bounded one in Optuna): the closest bounded
    range is mu +- 2 sigma (95 % of the mass), log-uniform for a log-normal."""
    _finite(source, key, mu, sigma)
    if sigma <= 0:
        raise ImportProblem(source, f"sigma {sigma} must be > 0", key=key)
    low, high = float(f"{mu - 2 * sigma:.6g}"), float(f"{mu + 2 * sigma:.6g}")
    if log:
        p = log_uniform(source, key, math.exp(low), math.exp(high), written)
        what = "log-normal"
    else:
        p = uniform(source, key, low, high, written)
        what = "normal"
    p.notes.append(
        f"! {what}(mu={mu}, sigma={sigma}) is not a distribution Optuna samples: closest "
        f"bounded range is mu +- 2 sigma, {p.dist}"
    )
    return p


def categorical(source: str, key: str, values: Any, written: str) -> Param:
    """choice(...) of distinct values; one value is a fixed override, none an error."""
    if not isinstance(values, list):
        raise ImportProblem(source, f"expected a list of values, not {values!r}", key=key)
    if not values:
        raise ImportProblem(source, "an empty list of values", key=key)
    distinct: list[Any] = []
    seen: set[str] = set()
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ImportProblem(source, f"value {v!r} is not a finite number", key=key)
        if isinstance(v, dict):
            raise ImportProblem(source, "a mapping can't be a value (lists can)", key=key)
        text = json.dumps([type(v).__name__, v])
        if text not in seen:
            seen.add(text)
            distinct.append(v)
    p = Param(key, "grid", values=distinct, source=written)
    if len(distinct) < len(values):
        p.notes.append("duplicate values removed")
    if len(distinct) == 1:
        p.kind = "fixed"
    else:
        p.dist = choice_text(distinct)
    return p


def fixed(key: str, value: Any, written: str) -> Param:
    return Param(key, "fixed", values=[value], source=written)
