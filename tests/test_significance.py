"""The report's statistics against scipy computed directly, and Holm against its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from runner.report import significance


def test_t_interval_is_students_over_the_seeds() -> None:
    xs = [0.71, 0.74, 0.69, 0.73]
    got = significance.t_interval(xs)
    low, high = stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
    assert got["n"] == 4
    assert got["mean"] == pytest.approx(np.mean(xs))
    assert got["std"] == pytest.approx(np.std(xs, ddof=1))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high))
    one = significance.t_interval([0.5, math.nan])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["ci_low"])


def test_paired_is_wilcoxon_and_a_seeded_bootstrap_of_the_mean_difference() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 0.8, 12)
    group = base + rng.normal(0.03, 0.02, 12)
    got = significance.paired(list(group), list(base))
    d = group - base
    assert got.n_cases == 12
    assert got.delta == pytest.approx(d.mean())
    assert got.p == pytest.approx(stats.wilcoxon(d).pvalue)
    ci = stats.bootstrap(
        (d,), np.mean, confidence_level=0.95, n_resamples=9999, rng=np.random.default_rng(0)
    ).confidence_interval
    assert (got.ci_low, got.ci_high) == pytest.approx((ci.low, ci.high))
    assert got.ci_low < got.delta < got.ci_high


def test_paired_edge_cases() -> None:
    same = significance.paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.p == 1.0 and same.delta == 0 and same.ci_low == same.ci_high == 0
    with_nan = significance.paired([0.5, math.nan, 0.9, 0.4], [0.4, 0.3, 0.6, 0.5])
    assert with_nan.n_cases == 3  # the pair with a NaN is left out
    assert significance.paired([], []).n_cases == 0


def test_holm_matches_its_definition() -> None:
    ps = [0.01, 0.04, 0.03, math.nan, 0.005]
    got = significance.holm(ps)
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), each at least the previous one
    assert got[4] == pytest.approx(0.02)
    assert got[0] == pytest.approx(0.03)
    assert got[2] == pytest.approx(0.06)
    assert got[1] == pytest.approx(0.06)  # 0.04 x 1 = 0.04, raised to the running max 0.06
    assert math.isnan(got[3])
    assert significance.holm([0.6, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_compare_adjusts_across_groups_and_says_what_holds() -> None:
    cases = [f"c{i}" for i in range(10)]
    base = {c: 0.6 + 0.01 * i for i, c in enumerate(cases)}
    better = {c: v + 0.1 + 0.001 * i for i, (c, v) in enumerate(base.items())}
    noise = {c: v + (0.01 if i % 2 else -0.01) for i, (c, v) in enumerate(base.items())}
    out = significance.compare({"base": base, "better": better, "noise": noise}, "base")
    assert set(out) == {"better", "noise"}
    raw = [out["better"].p, out["noise"].p]
    assert [out["better"].p_holm, out["noise"].p_holm] == pytest.approx(significance.holm(raw))
    assert out["better"].holds and not out["noise"].holds
    assert out["better"].n_cases == 10
