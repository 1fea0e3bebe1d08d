"""Structural checks of ``search``, ``pruner`` and ``restarts`` that pydantic can't express:
how they fit together and with the axes. Each problem points at its line. Whether the keys
exist in the recipe's config is checked with the axes, in :mod:`runner.matrix.validate`."""

from __future__ import annotations

import itertools
import json
from typing import Any

from runner.errors import Problem
from runner.matrix import cv as nested
from runner.matrix.asha import Asha, orion_rungs
from runner.matrix.schema import FIDELITY_KEY, MODEL_BASED, LoadedMatrix, PrunerOptions
from runner.matrix.space import Space, parse


def objective(m: LoadedMatrix) -> tuple[str, str]:
    """(metric, mode) the search and the pruner rank cells by."""
    spec = m.spec
    if spec.pruner is not None and spec.pruner.metric is not None:
        return spec.pruner.metric, spec.pruner.mode or "max"
    if spec.search is not None:
        return spec.search.metric, spec.search.mode
    if spec.pruner is not None and spec.pruner.mode is not None:
        return "val_dice", spec.pruner.mode
    return "val_dice", "max"


def check_search(m: LoadedMatrix) -> list[Problem]:
    problems: list[Problem] = []
    spec = m.spec
    s = spec.search
    grid_keys = set(spec.axes) | {k for inc in spec.include for k in inc}
    if s is not None:
        for key in s.space:
            where = ("search", "space", key)
            if key in grid_keys:
                problems.append(
                    m.problem(where, f"'{key}' is both an axis (or include key) and searched")
                )
            if spec.pruner is not None and key == FIDELITY_KEY:
                problems.append(
                    m.problem(where, f"'{key}' is the pruner's fidelity: set pruner.max_epochs")
                )
            if s.method == "grid" and parse(s.space[key]).kind != "choice":
                problems.append(
                    m.problem(
                        where,
                        "method grid takes choice(...) for every key; sample "
                        f"{parse(s.space[key]).kind} ranges with method random, tpe or gp",
                    )
                )
        if s.method != "grid" and s.trials is None:
            problems.append(
                m.problem(("search",), f"search.trials is required for method {s.method}")
            )
        if s.method == "grid" and s.trials is not None and not problems:
            size = Space(s.space).grid_size()
            if s.trials > size:
                problems.append(
                    m.problem(
                        ("search", "trials"),
                        f"the grid of choices has {size} points; trials must be at most that",
                    )
                )
        if s.startup is not None and s.method not in MODEL_BASED:
            problems.append(
                m.problem(("search", "startup"), "startup applies to methods tpe and gp")
            )
    problems += _check_pruner(m)
    problems += _check_restarts(m)
    return problems


def asha_of(p: PrunerOptions) -> Asha:
    """The pruner's ASHA, its rungs placed as the matrix says (checked by check_search)."""
    placed = None
    if p.rungs is not None:
        placed = tuple(p.rungs)
    elif p.num_rungs is not None:
        placed = tuple(orion_rungs(p.min_epochs, p.max_epochs, p.num_rungs))
    return Asha(p.min_epochs, p.max_epochs, p.reduction_factor, p.brackets, placed)


def _check_placed_rungs(m: LoadedMatrix, p: PrunerOptions) -> list[Problem]:
    """``rungs`` / ``num_rungs``: inside [min_epochs, max_epochs], increasing, and enough of
    them below max_epochs for every bracket."""
    span = f"[min_epochs {p.min_epochs}, max_epochs {p.max_epochs}]"
    if p.rungs is not None and p.num_rungs is not None:
        return [m.problem(("pruner", "rungs"), "give pruner.rungs or pruner.num_rungs, not both")]
    if p.num_rungs is not None:
        try:
            placed = orion_rungs(p.min_epochs, p.max_epochs, p.num_rungs)
        except ValueError as exc:
            return [m.problem(("pruner", "num_rungs"), str(exc))]
        where: tuple[str, ...] = ("pruner", "num_rungs")
    elif p.rungs is not None:
        problems = [
            m.problem(
                ("pruner", "rungs", i),
                f"rung {r} is outside {span}: a rung is an epoch between them",
            )
            for i, r in enumerate(p.rungs)
            if not p.min_epochs <= r <= p.max_epochs
        ]
        problems += [
            m.problem(("pruner", "rungs", i + 1), f"rungs must increase: {b} follows {a}")
            for i, (a, b) in enumerate(itertools.pairwise(p.rungs))
            if b <= a
        ]
        if problems:
            return problems
        placed, where = list(p.rungs), ("pruner", "rungs")
    else:
        return []
    compared = [r for r in placed if r < p.max_epochs]
    if len(compared) < p.brackets:
        return [
            m.problem(
                ("pruner", "brackets") if compared else where,
                f"the rungs below max_epochs {p.max_epochs} are {compared or 'none'}: "
                f"{p.brackets} bracket(s) need at least {p.brackets} of them "
                "(bracket b skips the first b rungs)",
            )
        ]
    return []


def _check_pruner(m: LoadedMatrix) -> list[Problem]:
    spec, p = m.spec, m.spec.pruner
    if p is None:
        return []
    problems = []
    if p.min_epochs >= p.max_epochs:
        problems.append(
            m.problem(
                ("pruner", "min_epochs"),
                f"min_epochs {p.min_epochs} must be below max_epochs {p.max_epochs}",
            )
        )
    elif p.rungs is not None or p.num_rungs is not None:
        problems += _check_placed_rungs(m, p)
    elif p.min_epochs * p.reduction_factor ** (p.brackets - 1) >= p.max_epochs:
        most = len(Asha(p.min_epochs, p.max_epochs, p.reduction_factor).rungs())
        problems.append(
            m.problem(
                ("pruner", "brackets"),
                f"bracket {p.brackets - 1} would first compare at epoch "
                f"{p.min_epochs * p.reduction_factor ** (p.brackets - 1)}, not below max_epochs "
                f"{p.max_epochs}; valid: 1 to {most} brackets",
            )
        )
    for i, item in enumerate(spec.base):
        key, _, value = item.lstrip("+").partition("=")
        if key == FIDELITY_KEY and value.strip() != str(p.max_epochs):
            problems.append(
                m.problem(
                    ("base", i),
                    f"{FIDELITY_KEY}={value} differs from pruner.max_epochs {p.max_epochs}; "
                    "the pruner sets it for every cell (remove it from base)",
                )
            )
    if FIDELITY_KEY in spec.axes:
        problems.append(
            m.problem(
                ("axes", FIDELITY_KEY),
                f"'{FIDELITY_KEY}' can't be an axis of a pruned matrix: pruner.max_epochs sets it",
            )
        )
    s = spec.search
    if (
        s is not None
        and p.metric is not None
        and (p.metric, p.mode or "max")
        != (
            s.metric,
            s.mode,
        )
    ):
        problems.append(
            m.problem(
                ("pruner", "metric"),
                f"the pruner ranks by {p.metric} ({p.mode or 'max'}) but the search by "
                f"{s.metric} ({s.mode}); set metric and mode once, in search",
            )
        )
    return problems


def _check_restarts(m: LoadedMatrix) -> list[Problem]:
    spec, r = m.spec, m.spec.restarts
    if r is None:
        return []
    if spec.search is None:
        return [
            m.problem(
                ("restarts",),
                "restarts repeat the best trials of a search: add a search block",
            )
        ]
    problems = []
    trials = spec.search.trials or Space(spec.search.space).grid_size()
    if r.top > trials:
        problems.append(m.problem(("restarts", "top"), f"top {r.top} exceeds the {trials} trials"))
    taken = set(spec.axes) | set(spec.search.space)
    if "seed" in taken:
        problems.append(m.problem(("restarts",), "restarts vary 'seed': don't search or grid it"))
    for key, values in r.axes.items():
        where = ("restarts", "axes", key)
        if key == "seed":
            problems.append(m.problem(where, "restarts.seeds sets the seeds"))
        elif key in taken:
            problems.append(m.problem(where, f"'{key}' is already an axis or searched"))
        if not values:
            problems.append(m.problem(where, "empty: give at least one value, or remove it"))
        seen: set[str] = set()
        for i, v in enumerate(values):
            k = json.dumps([type(v).__name__, v], default=str)
            if k in seen:
                problems.append(m.problem((*where, i), f"duplicate value {v!r}"))
            seen.add(k)
    return problems


def restart_axes(m: LoadedMatrix) -> dict[str, list[Any]]:
    """What restarts vary besides the seed: every outer fold of ``cv`` (the search ran on
    the first), then ``restarts.axes``."""
    r, cv = m.spec.restarts, m.spec.cv
    if r is None:
        return {}
    return {**({nested.KEY: nested.outer_values(cv)} if cv else {}), **r.axes}


def restart_points(m: LoadedMatrix) -> list[dict[str, Any]]:
    """The restart values of one configuration: each restart axis combination times seeds
    1..N (the search's own runs use the base seed, 0 by default: a restart is a new run)."""
    r = m.spec.restarts
    if r is None:
        return []
    axes = restart_axes(m)
    keys = list(axes)
    out = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        for seed in range(1, r.seeds + 1):
            out.append({**dict(zip(keys, combo, strict=True)), "seed": seed})
    return out
