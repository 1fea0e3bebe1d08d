"""Asynchronous successive halving (ASHA, Li et al. 2020), as Optuna's
``SuccessiveHalvingPruner`` does it, with brackets.

A cell of bracket ``b`` is compared at the rungs ``min_epochs * eta**(b + k)`` below
``max_epochs``, or at rungs placed as Oríon places them (``num_rungs`` log-spaced between
``min_epochs`` and ``max_epochs``: 15, 22, 33, 50 for [15, 50] and 4 rungs; see
:func:`orion_rungs`), or at explicit ones (``rungs``); the top rung, ``max_epochs``, is where a
cell ends, not a comparison. Bracket ``b`` then skips the first ``b`` rungs, as Oríon's.
Reaching a rung, a cell records its value there and goes on only when that value is in the top
``1/eta`` of all values recorded at that rung so far (itself included;
while fewer than ``eta`` are there, only the best goes on), else it stops: **pruned**. A
tie goes to the trial started first (the lower Optuna trial number: the order cells were
claimed in, so two cells tied at the same moment never both stop): "top 1/eta" is a count,
and letting every value equal to the cutoff through (Optuna's ``>=``) promotes whole
plateaus (at an early rung, every cell that still predicts one class everywhere scores the
same Dice). Nothing waits for a rung to fill, so cells never idle; early arrivals are
judged against fewer results, which is the asynchronous trade. Brackets (Hyperband's idea)
hedge against a ``min_epochs`` too small to tell configurations apart: bracket 1 first
compares at ``min_epochs * eta``. A cell's bracket follows from its id, so it never
changes.

This module is pure (no Optuna, no files): :mod:`runner.search.prune` keeps the rung values
in the study's journal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def orion_rungs(min_epochs: int, max_epochs: int, num_rungs: int) -> list[int]:
    """Oríon's ASHA budgets (``compute_budgets``): ``num_rungs`` epochs log-spaced from
    ``min_epochs`` to ``max_epochs``, rounded half up, each at least one past the one before;
    the last is ``max_epochs``. Raises ValueError when they don't fit (Oríon's BUDGET_ERROR)."""
    if num_rungs < 2:
        raise ValueError(f"num_rungs must be at least 2, got {num_rungs}")
    ratio = (max_epochs / min_epochs) ** (1 / (num_rungs - 1))
    out = [int(min_epochs * ratio**k + 0.5 + 1e-9) for k in range(num_rungs)]
    for i in range(1, num_rungs):
        out[i] = max(out[i], out[i - 1] + 1)
    if out[-1] > max_epochs:
        raise ValueError(
            f"{num_rungs} rungs don't fit between {min_epochs} and {max_epochs} epochs "
            f"(they would reach {out[-1]}); at most {max_epochs - min_epochs + 1}"
        )
    return out


@dataclass(frozen=True)
class Asha:
    min_epochs: int
    max_epochs: int
    eta: int = 3
    brackets: int = 1
    #: Rungs given as epochs (explicit, or Oríon's ``num_rungs`` spacing); None: the
    #: geometric ``min_epochs * eta**k``. Entries at max_epochs are the end, not a rung.
    placed: tuple[int, ...] | None = None

    def bracket_of(self, cell_id: str) -> int:
        return int(cell_id[:8], 16) % self.brackets

    def rungs(self, bracket: int = 0) -> list[int]:
        """The epochs at which a cell of ``bracket`` is compared (all below max_epochs)."""
        if self.placed is not None:
            return [e for e in self.placed if e < self.max_epochs][bracket:]
        out, epoch = [], self.min_epochs * self.eta**bracket
        while epoch < self.max_epochs:
            out.append(epoch)
            epoch *= self.eta
        return out


def rung_key(bracket: int, rung: int) -> str:
    """The trial system attribute holding a cell's value at a rung."""
    return f"asha:b{bracket}:r{rung}"


@dataclass(frozen=True)
class Verdict:
    promote: bool
    cutoff: float
    kept: int  # how many of the results at the rung go on
    seen: int  # results at the rung, this one included
    tied: bool = False  # equal to the cutoff: a tie the trials started earlier won


def _rankable(value: float, mode: str) -> float:
    """NaN ranks last whatever the mode."""
    if math.isnan(value):
        return -math.inf if mode == "max" else math.inf
    return value


def decide(
    value: float, at_rung: list[float], eta: int, mode: str, tied_ahead: int | None = None
) -> Verdict:
    """Whether ``value`` goes on, given every value at the rung (``value`` among them).
    ``tied_ahead``: how many of the other values equal to it win the tie (those of trials
    started earlier); by default all of them (``value`` arrived last)."""
    ranked = sorted((_rankable(v, mode) for v in at_rung), reverse=mode == "max")
    kept = max(1, len(ranked) // eta)
    cutoff = ranked[kept - 1]
    mine = _rankable(value, mode)
    better = sum(1 for v in ranked if (v > mine if mode == "max" else v < mine))
    ties = sum(1 for v in ranked if v == mine) - 1
    ahead = ties if tied_ahead is None else min(tied_ahead, ties)
    promote = not math.isnan(value) and better + ahead + 1 <= kept
    return Verdict(promote, cutoff, kept, len(ranked), tied=not promote and mine == cutoff)


def reason(metric: str, value: float, rung: int, epoch: int, eta: int, v: Verdict) -> str:
    """The ledger reason (and MLflow ``runner.reason``) of a pruned cell."""
    return (
        f"asha: rung {rung} (epoch {epoch}): {metric} {value:.4f} is not in the top 1/{eta} "
        f"({v.kept} of {v.seen}) at this rung, cutoff {v.cutoff:.4f}"
        + (" (a tie: it goes to the trials started first)" if v.tied else "")
    )


def rung_of_reason(text: str | None) -> int | None:
    """The rung a pruned cell stopped at, from its reason."""
    if not text or not text.startswith("asha: rung "):
        return None
    head = text[len("asha: rung ") :].split(" ", 1)[0]
    return int(head) if head.isdigit() else None
