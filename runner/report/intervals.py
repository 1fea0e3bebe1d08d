"""Intervals over seeds: Student-t, clipped to the metric's range, flagged when n < 3.

With n = 2 the t quantile is 12.7, so a 95 % interval for a Dice can run to [0.48, 1.20]:
past what a Dice can be. The interval stays the t interval (exact for normal data), cut at
the metric's bounds, and a note says when n < 3 leaves it too wide to compare groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from runner.report import significance

#: Dice, IoU, surface Dice: fractions.
UNIT = (0.0, 1.0)
FEW = 3


def seed_interval(values: Sequence[float], bounds: tuple[float, float] = UNIT) -> dict[str, object]:
    """:func:`significance.t_interval` with ``ci_low``/``ci_high`` clipped to ``bounds``
    and ``ci_note`` set when n < 3 (None otherwise)."""
    out: dict[str, object] = dict(significance.t_interval(values))
    low, high = float(out["ci_low"]), float(out["ci_high"])  # type: ignore[arg-type]
    if not math.isnan(low):
        out["ci_low"], out["ci_high"] = max(low, bounds[0]), min(high, bounds[1])
    n = int(out["n"])  # type: ignore[call-overload]
    out["ci_note"] = f"n={n} < {FEW}: too few to compare" if 0 < n < FEW else None
    return out
