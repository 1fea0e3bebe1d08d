"""Nested cross-validation (the matrix's ``cv`` block): outer folds to test, inner folds to
choose.

``cv: {outer: K, inner: J, seed: S}`` splits the subjects (the dataset's cases, sorted by id
and shuffled with S) into K outer folds. A cell of outer fold k never sees fold k's subjects
(they are its ``data.test``); the others are split into J inner folds, inner fold 0
validating and the rest training (``data.num_folds=J``, ``data.fold=0``). So everything that
chooses (best epoch, ASHA's rungs, a search's ranking, the best restart) sees only inner
validation, and outer fold k's subjects score what was chosen, once.

How the keys reach the recipe: every cell gets ``data.split_seed=S``, ``data.num_folds=J``,
``data.fold=0`` in its base, and its outer fold as ``data.test={fold: k, folds: K}`` (the
recipe holds that fold out, and splits the rest into the inner folds). Which cells get which
outer folds:

- a grid (no ``search``): every cell on every outer fold (an implicit axis after the
  matrix's own, labelled ``outer0``, ``outer1``, ... in run names);
- a ``search``: its trials on outer fold 0 only, as the stroke paper searches "on inner folds
  of the first outer fold"; its ``restarts`` train the chosen configuration on every outer
  fold (each seed on each outer fold).

This module is pure (no recipe, no files): :mod:`runner.matrix.cv_checks` checks a matrix's
``cv`` against the rest of it and against the number of subjects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The key that carries a cell's outer fold (the recipe's held-out cases).
KEY = "data.test"
#: Keys ``cv`` sets: a matrix must not set them too.
OWNED = ("data.test", "data.num_folds", "data.fold", "data.split_seed")


class CvOptions(BaseModel):
    """Nested cross-validation: ``outer`` folds of the subjects to test on, ``inner`` folds
    of each outer fold's other subjects to train and validate on, shuffled with ``seed``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outer: int = Field(ge=2, le=100, description="outer folds: each one's subjects test")
    inner: int = Field(ge=2, le=100, description="inner folds of the rest: fold 0 validates")
    seed: int = Field(0, ge=0, lt=2**31, description="shuffles the subjects (data.split_seed)")


def outer_value(fold: int, cv: CvOptions) -> dict[str, int]:
    """``data.test`` of outer fold ``fold``: the recipe holds those subjects out."""
    return {"fold": fold, "folds": cv.outer}


def outer_values(cv: CvOptions) -> list[dict[str, int]]:
    return [outer_value(k, cv) for k in range(cv.outer)]


def label(fold: int) -> str:
    """The run-name token of outer fold ``fold``."""
    return f"outer{fold}"


def base_overrides(cv: CvOptions) -> list[str]:
    """What every cell of a ``cv`` matrix adds to its base: the inner folds and the seed."""
    return [f"data.num_folds={cv.inner}", "data.fold=0", f"data.split_seed={cv.seed}"]


def outer_of(values: dict[str, Any]) -> int | None:
    """A cell's outer fold, from its values; None for a cell without one."""
    spec = values.get(KEY)
    if isinstance(spec, dict) and set(spec) == {"fold", "folds"}:
        return int(spec["fold"])
    return None


def fold_sizes(cases: int, folds: int) -> list[int]:
    """How many of ``cases`` each of ``folds`` folds holds (MONAI's ``partition_dataset``
    deals the shuffled cases out in turn, so the first ``cases % folds`` hold one more)."""
    return [cases // folds + (1 if k < cases % folds else 0) for k in range(folds)]
