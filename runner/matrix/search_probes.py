"""Validating a search space against the recipe with the axes' own checks: each point of
the grid is probed with the values a distribution can take (a bound, each choice), so a
searched key is checked like an axis (it exists in the config composed for that point,
with a compatible type) and a problem points at its line in ``search.space``."""

from __future__ import annotations

from typing import Any

from runner.matrix.cells import Cell
from runner.matrix.schema import LoadedMatrix
from runner.matrix.space import Dist, parse


def _probe_values(dist: Dist, is_group: bool) -> list[Any]:
    if dist.kind == "choice":
        return list(dist.args)
    if is_group:
        return [dist.text()]  # a group takes choices: reported as an unknown choice
    # One bound is enough: both have the type every sample has.
    return [int(dist.low)] if dist.kind == "int_uniform" else [float(dist.low)]


def probe_cells(m: LoadedMatrix, grid: list[Cell], groups: set[str]) -> list[Cell]:
    """Cells that carry every value a searched key or a restart axis can take."""
    extra: dict[str, list[Any]] = {}
    if m.spec.search is not None:
        for key, text in m.spec.search.space.items():
            extra[key] = _probe_values(parse(text), key in groups)
    if m.spec.restarts is not None:
        extra.update({k: list(v) for k, v in m.spec.restarts.axes.items() if v})
    if not extra:
        return grid
    out = []
    for cell in grid:
        first = {k: v[0] for k, v in extra.items()}
        out.append(Cell(cell.id, {**cell.values, **first}, (), origin=cell.origin))
        for key, values in extra.items():
            for v in values[1:]:
                probe = {**cell.values, **first, key: v}
                out.append(Cell(cell.id, probe, (), origin=cell.origin))
    return out


def distribution_hint(m: LoadedMatrix, key: str, current: Any) -> str:
    """What to write instead, when a searched key's distribution doesn't fit its type."""
    if m.spec.search is None or key not in m.spec.search.space:
        return ""
    kind = parse(m.spec.search.space[key]).kind
    if isinstance(current, int) and not isinstance(current, bool) and kind != "int_uniform":
        return "; use int_uniform(a, b) (or choice) for an integer key"
    if isinstance(current, (str, bool, list)) and kind != "choice":
        return "; use choice(v1, v2, ...) for this key"
    return ""
