"""Checks of a matrix's ``cv`` block (:mod:`runner.matrix.cv`), each pointing at its line:
against the rest of the matrix (keys that ``cv`` sets can't be set elsewhere; a search needs
restarts to reach the other outer folds), and against the number of subjects the data holds
(:func:`fold_problems`, once the data can be listed)."""

from __future__ import annotations

from runner.errors import Problem
from runner.matrix import cv as nested
from runner.matrix.schema import LoadedMatrix
from runner.matrix.yaml_lines import Path_

#: What ``cv`` means by each key it sets (for the messages).
_SET_BY = {
    "data.test": "each outer fold's subjects (cv.outer)",
    "data.num_folds": "the inner folds (cv.inner)",
    "data.fold": "inner fold 0, which validates",
    "data.split_seed": "the shuffle of the subjects (cv.seed)",
}


def check_cv(m: LoadedMatrix) -> list[Problem]:
    spec, cv = m.spec, m.spec.cv
    if cv is None:
        return []
    problems: list[Problem] = []
    wanted = dict(o.partition("=")[::2] for o in nested.base_overrides(cv))
    for i, item in enumerate(spec.base):
        key, _, value = item.lstrip("+").partition("=")
        if key == nested.KEY:
            problems.append(
                m.problem(
                    ("base", i),
                    f"{item}: a cv matrix's test sets are its outer folds (cv sets data.test "
                    "to each outer fold's subjects): remove it from base",
                )
            )
        elif key in wanted and value.strip() != wanted[key]:
            problems.append(
                m.problem(
                    ("base", i),
                    f"{item} conflicts with cv, which sets {key}={wanted[key]} "
                    f"({_SET_BY[key]}): remove it from base",
                )
            )
    places: list[tuple[Path_, list[str]]] = [(("axes",), list(spec.axes))]
    places += [(("include", i), list(inc)) for i, inc in enumerate(spec.include)]
    if spec.search is not None:
        places.append((("search", "space"), list(spec.search.space)))
    if spec.restarts is not None:
        places.append((("restarts", "axes"), list(spec.restarts.axes)))
    for where, keys in places:
        for key in keys:
            if key in nested.OWNED:
                problems.append(
                    m.problem(
                        (*where, key),
                        f"'{key}' is set by cv ({_SET_BY[key]}): a cv matrix can't vary it",
                    )
                )
    if spec.search is not None and spec.restarts is None:
        problems.append(
            m.problem(
                ("cv",),
                "a search with cv runs its trials on outer fold 0 only; add restarts (e.g. "
                "restarts: {seeds: 10, top: 1}) to train the chosen configuration on every "
                "outer fold and score it on that fold's held-out subjects",
            )
        )
    return problems


def fold_problems(m: LoadedMatrix, subjects: int, where: str) -> list[Problem]:
    """Whether ``cv`` fits ``subjects`` subjects (the data at ``where``): every outer fold
    holds at least one, and each outer fold's others fill the inner folds."""
    cv = m.spec.cv
    if cv is None:
        return []
    if subjects < cv.outer:
        return [
            m.problem(
                ("cv", "outer"),
                f"{cv.outer} outer folds need at least {cv.outer} subjects; {where} has "
                f"{subjects}: lower cv.outer",
            )
        ]
    held = max(nested.fold_sizes(subjects, cv.outer))
    left = subjects - held
    if left < cv.inner:
        return [
            m.problem(
                ("cv", "inner"),
                f"{cv.inner} inner folds need at least {cv.inner} subjects in each outer "
                f"fold's training part; of the {subjects} subjects in {where}, outer fold 0 "
                f"holds out {held} and leaves {left}: lower cv.inner or cv.outer",
            )
        ]
    return []
