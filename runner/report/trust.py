"""How far a report's comparisons can be trusted: small samples, seeds needed, fair budgets.

- **small samples**: with n paired test cases the two-sided Wilcoxon signed-rank test can
  never give p below 2/2^n (0.0625 at n = 5: "holds" can't be yes at n ≤ 5), and the BCa
  bootstrap 95 % interval of a mean difference covers the truth less often than 95 % when n
  is small (:data:`BCA_COVERAGE`, simulated); over seeds, a Student-t interval with n < 3 is
  too wide to say much and is clipped to the metric's range;
- **seeds needed**: from each group's spread over seeds (the sample std of its best val
  Dice), how many seeds per group a two-sided two-sample t-test at α = 0.05 needs to detect,
  with 80 % power, the difference seen between it and the reference group (the baseline,
  else the best group), and a difference the user names (``--delta``);
- **fairness**: each compared arm's tuning budget (an arm is a search's study when the
  matrix searches, else a group of the report): cells that ran, epochs, GPU-hours (cell
  wall-hours on a CPU executor), the pruned fraction; an arm whose trials or epochs differ
  from the reference arm's by more than ``--budget-factor`` (default 1.5×) is flagged:
  unequal tuning is the most common unfair baseline. Hours are shown, not flagged: a
  bigger model costs more hours for the same tuning.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from runner.plan import Plan
from runner.report.stats import Group, group_label

ALPHA = 0.05
POWER = 0.80
MAX_SEEDS = 1000
BUDGET_FACTOR = 1.5
#: What makes a tuning budget: hours are shown beside, not flagged (a bigger model costs
#: more hours for the same trials and epochs: a fact of the method, not unfair tuning).
TUNING = ("trials", "epochs")

#: Coverage of the report's BCa bootstrap 95 % interval of a mean difference
#: (``significance._bootstrap``, 9999 resamples) for normal data with a known mean: 1000
#: simulated samples per n (a standard error of about 0.01; N(0, 1) differences drawn with
#: ``numpy.random.default_rng(12345)``, bootstrap seed = sample index), 2026-12-07.
BCA_COVERAGE = {3: 0.71, 4: 0.80, 5: 0.85, 6: 0.856, 8: 0.884, 10: 0.909, 12: 0.904,
                15: 0.903, 20: 0.923, 30: 0.929}  # fmt: skip
#: Below this simulated coverage a report says the interval reads too narrow (n ≤ 15).
COVERAGE_NOTE = 0.92


NO_RULES = "unrecorded"


def rules_notes(rules: dict[str, list[str]]) -> list[str]:
    """A note when compared cells defined Dice differently, or did not record how."""
    notes = []
    if NO_RULES in rules:
        notes.append(
            f"{len(rules[NO_RULES])} cells recorded no metric_rules (trained before one rule "
            "held everywhere): their val Dice may leave out volumes where a class was "
            "predicted but absent (MONAI's ignore_empty), reading higher than test Dice"
        )
    if len(rules) > 1:
        notes.append(
            f"the compared cells defined their metrics {len(rules)} ways: a difference may be "
            "the definitions'; `runner rerun` the older cells"
        )
    return notes


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n nonzero pairs."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def bca_coverage(n: int) -> float | None:
    """The simulated coverage at the largest tabulated n not above ``n`` (None: n < 3)."""
    known = [k for k in BCA_COVERAGE if k <= n]
    return BCA_COVERAGE[max(known)] if known else None


def small_n_notes(report_groups: list[dict[str, Any]]) -> list[str]:
    """The notes the paired comparisons and the intervals over seeds need."""
    notes = []
    cases = sorted({int(r["vs_baseline_n_cases"]) for r in report_groups
                    if r.get("vs_baseline_n_cases")})  # fmt: skip
    for n in cases:
        if n <= 5:
            notes.append(
                f"{n} paired test cases: the Wilcoxon signed-rank test can never give p < "
                f"{wilcoxon_floor(n):.4g} (its smallest possible p, 2/2^{n}), so no "
                "difference can hold at α = 0.05; more test cases, not more seeds, fix this"
            )
        coverage = bca_coverage(n)
        if coverage is not None and coverage < COVERAGE_NOTE:
            notes.append(
                f"{n} paired test cases: the bootstrap (BCa) 95 % interval covered the true "
                f"mean difference in only {100 * coverage:.0f} % of simulated samples of this "
                "size (normal data): read it as too narrow"
            )
    seeds = sorted({int(r["n"]) for r in report_groups if r.get("n")})
    if any(n < 3 for n in seeds):
        low = ", ".join(str(n) for n in seeds if n < 3)
        notes.append(
            f"groups with n = {low} over seeds: with n = 2 the t interval's half-width is "
            "12.7 standard errors, with n = 1 there is none; intervals are clipped to [0, 1] "
            "and marked; run 3 or more seeds to compare groups"
        )
    return notes


def seeds_needed(sd: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds per group for a two-sided two-sample t-test (equal groups, common std ``sd``)
    to detect a difference ``delta`` with ``power``; None: more than :data:`MAX_SEEDS`, or
    nothing to detect."""
    from scipy import stats

    if not (math.isfinite(sd) and math.isfinite(delta)) or delta == 0:
        return None
    if sd == 0:
        return 2
    # The normal approximation is a close lower bound: search up from just below it.
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    start = max(2, math.floor(2 * (z * sd / abs(delta)) ** 2) - 2)
    if start > MAX_SEEDS:
        return None
    for n in range(start, MAX_SEEDS + 1):
        df = 2 * n - 2
        shift = abs(delta) / (sd * math.sqrt(2 / n))
        crit = stats.t.ppf(1 - alpha / 2, df)
        got = stats.nct.sf(crit, df, shift) + stats.nct.cdf(-crit, df, shift)
        if got >= power:
            return n
    return None


def _pooled_sd(a: Group, b: Group) -> float:
    sds = [g.stats()[1] for g in (a, b)]
    known = [s for s in sds if math.isfinite(s)]
    return math.sqrt(statistics.fmean(s * s for s in known)) if known else math.nan


def seed_rows(groups: list[Group], reference: Group, delta: float | None) -> list[dict[str, Any]]:
    """Per group against ``reference``: the difference of mean best val Dice seen, the
    pooled std over seeds, and the seeds per group needed for it (and for ``delta``)."""
    rows = []
    for g in groups:
        if g is reference:
            continue
        sd = _pooled_sd(g, reference)
        seen = reference.stats()[0] - g.stats()[0]
        rows.append(
            {
                "group": g.label,
                "reference": reference.label,
                "n": g.n,
                "n_reference": reference.n,
                "difference_seen": seen,
                "sd_over_seeds": sd,
                "seeds_for_seen": seeds_needed(sd, seen),
                "delta": delta,
                "seeds_for_delta": seeds_needed(sd, delta) if delta else None,
            }
        )
    return rows


def arm_of(plan: Plan, cell: Any) -> str:
    """The arm a cell's budget counts for: its search study, else its report group."""
    search = plan.search
    if search is not None:
        study = search.study_of(cell.id)
        if study is None and "restart.of" in cell.tags:
            study = search.study_of(cell.tags["restart.of"])
        if study is not None:
            return study.name
    return group_label(cell.values, set(plan.recipe.groups), plan.matrix.labels)


def budgets(plan: Plan, cell_hours: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm: cells that ran, epochs, GPU-hours (or wall-hours without a GPU), pruned."""
    states = plan.states()
    arms: dict[str, dict[str, Any]] = {}
    for cell in plan.cells:
        hours = cell_hours.get(cell.id)
        if hours is None or not hours.attempts:
            continue  # never started: no budget spent
        arm = arms.setdefault(
            arm_of(plan, cell),
            {"trials": 0, "epochs": 0, "gpu_hours": 0.0, "wall_hours": 0.0, "pruned": 0},
        )
        arm["trials"] += 1
        arm["epochs"] += int(hours.units or 0)
        arm["gpu_hours"] += hours.gpu_hours
        arm["wall_hours"] += hours.wall_hours
        arm["pruned"] += states[cell.id].state == "pruned"
    gpu = any(a["gpu_hours"] > 0 for a in arms.values())
    for name, arm in arms.items():
        arm["arm"] = name
        arm["hours"] = arm["gpu_hours"] if gpu else arm["wall_hours"]
        arm["hours_kind"] = "GPU-hours" if gpu else "wall-hours (no GPU)"
        arm["pruned_fraction"] = arm["pruned"] / arm["trials"] if arm["trials"] else 0.0
    return arms


def _ratio(a: float, b: float) -> float:
    low, high = sorted((float(a), float(b)))
    if high == 0:
        return 1.0
    return math.inf if low == 0 else high / low


def unfair(
    arms: dict[str, dict[str, Any]], reference: str, compared: Iterable[str], factor: float
) -> list[dict[str, Any]]:
    """The compared arms whose trials or epochs (:data:`TUNING`) differ from
    ``reference``'s by more than ``factor`` (either way)."""
    base = arms.get(reference)
    out = []
    for name in dict.fromkeys(compared):
        arm = arms.get(name)
        if base is None or arm is None or name == reference:
            continue
        over = {
            what: _ratio(arm[what], base[what])
            for what in TUNING
            if _ratio(arm[what], base[what]) > factor
        }
        if over:
            out.append({"arm": name, "reference": reference, "ratios": over})
    return out


def build(
    plan: Plan,
    report_groups: list[dict[str, Any]],
    groups: list[Group],
    cell_hours: dict[str, Any],
    *,
    baseline: str | None,
    delta: float | None,
    factor: float = BUDGET_FACTOR,
    baseline_csv: bool = False,
) -> dict[str, Any]:
    """The report's ``trust`` section (module doc)."""
    reference = next((g for g in groups if g.label == baseline), groups[0] if groups else None)
    arms = budgets(plan, cell_hours)
    group_arm = {g.label: arm_of(plan, g.cells[0].cell) for g in groups if g.cells}
    flagged: list[dict[str, Any]] = []
    if reference is not None:
        ref_arm = group_arm.get(reference.label, reference.label)
        flagged = unfair(arms, ref_arm, group_arm.values(), factor)
    notes = small_n_notes(report_groups)
    for f in flagged:
        shown = ", ".join(
            f"{what} {'∞' if math.isinf(r) else f'{r:.1f}'}×" for what, r in f["ratios"].items()
        )
        notes.append(
            f"unequal tuning budgets: {f['arm']} against {f['reference']} ({shown}, more "
            f"than {factor:g}×): a difference may be the budget's, not the method's"
        )
    if baseline_csv:
        notes.append(
            "the CSV baseline's tuning budget is unknown: compare it only with arms tuned "
            "the way it was"
        )
    return {
        "notes": notes,
        "reference": reference.label if reference else None,
        "seeds": seed_rows(groups, reference, delta) if reference else [],
        "alpha": ALPHA,
        "power": POWER,
        "delta": delta,
        "budget_factor": factor,
        "budgets": list(arms.values()),
        "group_arm": group_arm,
        "unfair": flagged,
    }
