"""Comparisons that hold up: intervals over seeds, paired tests over test cases, Holm.

- :func:`t_interval`: mean, sample std and the two-sided Student-t 95 % CI of the mean, with
  n: what seeds and restarts of one configuration support;
- :func:`paired`: one group against the baseline on the *same* test cases: the mean of the
  per-case differences, its bootstrap 95 % CI (``scipy.stats.bootstrap``, BCa, resampling
  cases, seeded so a report is reproducible) and the Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, two-sided; zero differences are dropped, as Wilcoxon's own
  variant does; all differences zero gives p = 1);
- :func:`holm`: Holm's step-down adjustment across the groups compared with one baseline,
  so that "holds" means the family-wise error rate stays at ``ALPHA``;
- :func:`compare`: all groups against a baseline, adjusted; a difference *holds* when its
  Holm-adjusted p is below ``ALPHA``;
- :func:`welch`: Welch's unequal-variance t-test from two sides' mean, sample std and n
  (``scipy.stats.ttest_ind_from_stats``), for a baseline known by its summary only (a CSV).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05
LEVEL = 0.95
N_RESAMPLES = 9999
SEED = 0


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """{"mean", "std", "ci_low", "ci_high", "n"} over the finite ``values``."""
    from scipy import stats

    xs = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(xs)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean = statistics.fmean(xs)
    if n < 2:
        return {"mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    std = statistics.stdev(xs)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


@dataclass
class Paired:
    n_cases: int
    delta: float  # mean of (group - baseline) over the cases
    ci_low: float
    ci_high: float
    p: float  # Wilcoxon signed-rank, two-sided
    p_holm: float = math.nan
    holds: bool = False


def paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Paired:
    """``a`` against ``b``, case by case (same order); pairs with a NaN are left out."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    d = np.asarray([x - y for x, y in pairs], dtype=float)
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    delta = float(d.mean())
    if n < 2 or np.all(d == d[0]):
        low = high = delta if n >= 2 else math.nan
    else:
        low, high = _bootstrap(d, level, n_resamples, seed)
    if np.all(d == 0):
        p = 1.0
    elif n < 2:
        p = math.nan
    else:
        p = float(stats.wilcoxon(d).pvalue)
    return Paired(n, delta, low, high, p)


def _bootstrap(d: np.ndarray, level: float, n_resamples: int, seed: int) -> tuple[float, float]:
    """BCa, falling back to the percentile interval where BCa is undefined (tiny samples)."""
    from scipy import stats

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's degenerate-sample warnings: handled below
            res = stats.bootstrap(
                (d,),
                np.mean,
                confidence_level=level,
                n_resamples=n_resamples,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return math.nan, math.nan


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order; NaN stays NaN and does not count."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    m = len(indexed)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def compare(
    per_case: Mapping[str, Mapping[str, float]], baseline: str, alpha: float = ALPHA
) -> dict[str, Paired]:
    """Every group of ``per_case`` (group -> case -> value) against ``baseline`` on the cases
    both have, Holm-adjusted across the groups."""
    base = per_case[baseline]
    out = {}
    for group, values in per_case.items():
        if group == baseline:
            continue
        common = sorted(set(values) & set(base))
        out[group] = paired([values[c] for c in common], [base[c] for c in common])
    for result, adjusted in zip(out.values(), holm([r.p for r in out.values()]), strict=True):
        result.p_holm = adjusted
        result.holds = math.isfinite(adjusted) and adjusted < alpha
    return out


def as_row(result: Paired, prefix: str = "") -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in asdict(result).items()}


@dataclass
class Welch:
    t: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p: float  # two-sided


def welch(mean1: float, std1: float, n1: int, mean2: float, std2: float, n2: int) -> Welch:
    """Welch's t-test of side 1 against side 2 from their means, sample stds and sizes."""
    from scipy import stats

    v1, v2 = std1**2 / n1, std2**2 / n2
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1)) if v1 + v2 > 0 else math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both stds 0: scipy warns and returns NaN
        res = stats.ttest_ind_from_stats(mean1, std1, n1, mean2, std2, n2, equal_var=False)
    return Welch(float(res.statistic), float(df), float(res.pvalue))
