"""``runner plan``'s estimate of the GPU-hours its cells still need, from the cells done.

A cell that has not run yet (pending, queued, submitted) costs, by estimate, the seconds per
epoch of the done cells with the same model, patch and batch (their wall time over all
attempts, startup and validation included, divided by the epochs they completed; the median
over those cells) × its own ``max_epochs`` (``max_steps`` for step-based recipes) × the GPUs
the executor options give it. Pruned cells count as done here: their epochs cost the same.
A cell with no such done cell takes the run time ``runner profile`` predicted for it (its
shape's step time × its steps), marked "profiled"; with neither it is not guessed at: the
estimate says which (model, patch, batch) it lacks. Early stopping makes the figure an upper
bound; a profile counts training steps only (no validation), a lower bound of its own.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.ledger import CellState, read_json, write_json_atomic
from runner.matrix.cache import fingerprint
from runner.matrix.cells import Cell
from runner.plan import Plan
from runner.recipe import Composer
from runner.report.gpu_hours import (
    CellHours,
    Usage,
    cell_hours,
    fmt_hours,
    summary_line,
    totals,
)

TO_RUN = ("pending", "queued", "submitted")
MEASURED = ("done", "pruned")
#: Where a matrix's profiles are remembered, in its sweep directory.
PROFILES = "profiles.json"
#: What a remembered profile holds: a change of :class:`Profile` or of how it is read from
#: a config bumps it, and older records are composed again.
PROFILE_FORMAT = 1
#: Where ``runner profile`` keeps its figures, in the sweep directory.
PROFILED = "profile/profiles.json"


@dataclass(frozen=True)
class Profile:
    """What a cell's cost depends on, from its composed config."""

    model: str
    patch: str
    batch: str
    length: int | None  # max_epochs (or max_steps)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.patch, self.batch)

    def says(self) -> str:
        return f"model={self.model}, patch={self.patch}, batch={self.batch}"


def _choice(overrides: list[str], group: str) -> str | None:
    found = None
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if sep and key == group:
            found = value
    return found


#: The config groups a profile can depend on (model: its choice; training: patch, batch,
#: epochs; dims, data and task can set those). Other overrides (optimizer.lr, loss, seed,
#: model.width) are left out of the composition, so that cells differing only by them
#: compose once: a search of 60 trials composes once per model, not 60 times.
SHAPING = ("model", "training", "dims", "data", "task")


def _shapes(override: str) -> bool:
    key = override.lstrip("+~").partition("=")[0]
    return key in SHAPING or key.startswith(tuple(f"{g}." for g in SHAPING[1:]))


def _shaping(plan: Plan, cell: Cell) -> tuple[str, ...]:
    return tuple(o for o in [*plan.matrix.spec.base, *cell.overrides] if _shapes(o))


def _profile(cfg: Any, shaping: tuple[str, ...]) -> Profile | None:
    if isinstance(cfg, Exception):
        return None  # validation said so already; such a cell is not estimated
    training = cfg.get("training") or {}
    model = _choice(list(shaping), "model") or str((cfg.get("model") or {}).get("name", "?"))
    patch = training.get("patch_size")
    length = training.get("max_epochs", training.get("max_steps"))
    return Profile(
        model,
        "x".join(str(p) for p in patch) if patch is not None else "-",
        str(training.get("batch_size", "-")),
        int(length) if isinstance(length, int) else None,
    )


def profiles(plan: Plan, cells: list[Cell]) -> dict[str, Profile]:
    """Each cell's profile, composed from the overrides that can shape it (``SHAPING``): a
    matrix of many seeds and learning rates composes once per model, data and training.

    Remembered in the sweep directory (``PROFILES``) under the matrix's fingerprint
    (:func:`runner.matrix.cache.fingerprint`: the matrix, the recipe's config files, the
    code): composing costs a Hydra start, several times what the rest of ``status`` does
    on a 1,000-cell matrix, and a status during a sweep would pay it on every call."""
    shaping = {c.id: _shaping(plan, c) for c in cells}
    key = _profiles_key(plan)
    known = _remembered(plan.ledger.root / PROFILES, key)
    missing = sorted(set(shaping.values()) - known.keys())
    if missing:
        with Composer(plan.recipe) as composer:
            for overrides in missing:
                known[overrides] = _profile(composer.compose(list(overrides)), overrides)
        _remember(plan.ledger.root / PROFILES, key, known)
    return {cid: p for cid, s in shaping.items() if (p := known[s]) is not None}


def _profiles_key(plan: Plan) -> str:
    cells = plan.grid if plan.grid is not None else plan.cells  # trials come and go
    return f"{PROFILE_FORMAT}:{fingerprint(plan.matrix, plan.recipe, [c.id for c in cells])}"


def _remembered(path: Path, key: str) -> dict[tuple[str, ...], Profile | None]:
    """The profiles recorded under ``key``; none when there is no such record (or it can't
    be read: they are composed again)."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("key") != key:
        return {}
    try:
        return {
            tuple(overrides): None if p is None else Profile(**p)
            for overrides, p in data["profiles"]
        }
    except (KeyError, TypeError, ValueError):
        return {}


def _remember(path: Path, key: str, known: dict[tuple[str, ...], Profile | None]) -> None:
    """Record the profiles where the matrix's sweep directory exists; never fails (a
    read-only or full disk: they are composed again next time)."""
    if not path.parent.is_dir():
        return
    rows = [[list(o), None if p is None else asdict(p)] for o, p in sorted(known.items())]
    with contextlib.suppress(OSError):
        write_json_atomic(path, {"key": key, "profiles": rows})


def profiled_seconds(plan: Plan) -> dict[str, float]:
    """Cell id -> the run time ``runner profile`` predicted for it (seconds)."""
    saved = read_json(plan.ledger.root / PROFILED) or {}
    out: dict[str, float] = {}
    for shape in (saved.get("shapes") or {}).values():
        for cid, cell in (shape.get("cells") or {}).items():
            if isinstance(cell, dict) and isinstance(cell.get("run_s"), (int, float)):
                out[cid] = float(cell["run_s"])
    return out


def estimate(
    plan: Plan,
    states: dict[str, CellState],
    hours: dict[str, CellHours],
    here: list[int] | None = None,
) -> dict[str, Any]:
    """The estimate for the cells still to run, JSON-ready (``plan --json``'s ``gpu_hours``).

    Keys: ``cells`` (to run), ``estimated`` (of them), ``gpus_per_cell``, ``gpu_hours`` and
    ``wall_hours`` (of the estimated; None when none is), ``by_config`` (one entry per model,
    patch and batch: the done cells it rests on and their seconds per epoch) and
    ``cannot`` (one line per configuration without a done cell)."""
    todo = [c for c in plan.cells if states[c.id].state in TO_RUN]
    done = [
        c
        for c in plan.cells
        if states[c.id].state in MEASURED and hours[c.id].units and hours[c.id].wall_s > 0
    ]
    result: dict[str, Any] = {
        "cells": len(todo),
        "estimated": 0,
        "gpus_per_cell": plan.matrix.spec.executor.cell_gpus(here),
        "gpu_hours": None,
        "wall_hours": None,
        "by_config": [],
        "cannot": [],
    }
    if not todo:
        return result
    profiled = profiled_seconds(plan)
    result["profiled"] = 0
    if not done and not any(c.id in profiled for c in todo):
        # Nothing measured yet: no composition needed to say so.
        result["cannot"].append(f"cannot estimate {len(todo)} cell(s): no cell is done yet")
        return result
    prof = profiles(plan, todo + done)
    rates: dict[tuple[str, str, str], list[float]] = {}
    for c in done:
        if c.id in prof:
            rates.setdefault(prof[c.id].key, []).append(hours[c.id].wall_s / hours[c.id].units)
    gpus = result["gpus_per_cell"]
    by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
    wall_total = 0.0
    for c in todo:
        p = prof.get(c.id)
        if p is None:
            continue
        entry = by_key.setdefault(
            p.key,
            {"model": p.model, "patch": p.patch, "batch": p.batch, "cells": 0, "wall_s": 0.0},
        )
        entry["cells"] += 1
        if p.key in rates and p.length:
            per_epoch = statistics.median(rates[p.key])
            entry.update(from_done=len(rates[p.key]), seconds_per_epoch=per_epoch)
            seconds = per_epoch * p.length
        elif c.id in profiled:  # no done cell: the profile's prediction
            entry["profiled"] = entry.get("profiled", 0) + 1
            result["profiled"] += 1
            seconds = profiled[c.id]
        else:
            continue
        entry["wall_s"] += seconds
        entry["estimated"] = entry.get("estimated", 0) + 1
        wall_total += seconds
        result["estimated"] += 1
    for entry in by_key.values():
        wall_s = entry.pop("wall_s")
        estimated = entry.pop("estimated", 0)
        if estimated:
            entry.update(wall_hours=wall_s / 3600, gpu_hours=wall_s * gpus / 3600)
            entry["source"] = "profiled" if "seconds_per_epoch" not in entry else "done cells"
        else:
            entry["gpu_hours"] = None
        if estimated < entry["cells"]:
            result["cannot"].append(
                f"cannot estimate {entry['cells'] - estimated} cell(s): no done cell with "
                f"model={entry['model']}, patch={entry['patch']}, batch={entry['batch']} "
                "(and no `runner profile` of them)"
            )
        result["by_config"].append(entry)
    if result["estimated"]:
        result["wall_hours"] = wall_total / 3600
        result["gpu_hours"] = wall_total * gpus / 3600
    return result


def overview(
    plan: Plan,
    states: dict[str, CellState] | None = None,
    accounting: tuple[Usage, str | None] | None = None,
) -> tuple[dict[str, Any], dict[str, CellHours]]:
    """What ``plan`` and ``status`` show of GPU-hours: spent (``totals`` and a ``warning``
    when the executors' accounting could not be asked) and the ``estimate`` for the cells to
    run, JSON-ready; and each cell's hours (for :func:`runner.cli.export.rows`).
    ``accounting``: :func:`runner.sweep.reconcile.accounting`'s (None: the ledger's)."""
    states = plan.states() if states is None else states
    usage, warning = accounting or ({}, None)
    hours = cell_hours(plan, states, usage)
    out = {**totals(hours), "warning": warning, "estimate": estimate(plan, states, hours)}
    return out, hours


def overview_lines(view: dict[str, Any]) -> list[str]:
    """The overview as lines under the status table."""
    lines = [summary_line(view)] if view["sources"] else []
    lines += describe(view["estimate"])
    return lines


def describe(est: dict[str, Any]) -> list[str]:
    """The estimate as lines for ``runner plan``."""
    if not est["cells"]:
        return []
    lines = []
    if est["estimated"]:
        what = (
            f"{fmt_hours(est['gpu_hours'])} GPU-hours ({est['gpus_per_cell']} GPU per cell)"
            if est["gpus_per_cell"]
            else "0 GPU-hours (CPU cells)"
        )
        n_profiled = est.get("profiled", 0)
        source = (
            "profiled: `runner profile`'s step time x each cell's steps"
            if n_profiled == est["estimated"]
            else "from the done cells' time per epoch"
            + (f"; {n_profiled} profiled" if n_profiled else "")
        )
        lines.append(
            f"estimate for {est['estimated']} of {est['cells']} cells to run: {what}, "
            f"{fmt_hours(est['wall_hours'])} cell-hours of wall time ({source})"
        )
    lines += est["cannot"]
    return lines
