"""Bring your sweep: a W&B sweep, an Oríon experiment or a Hydra multirun -> a matrix.

    from runner.importers import import_sweep
    result = import_sweep("sweep.yaml", recipe="segmentation", base=["data=isles24"])
    result.text        # the commented matrix YAML
    result.warnings    # what needs a look ("!" in the file): flipped goals, log ranges <= 0...
    result.unmapped    # source keys not mapped to the recipe (commented out in the file)
    result.problems    # what `runner plan` says of it (empty: it plans as written)

Modules: :mod:`.sources` (read and tell the format), :mod:`.wandb`, :mod:`.orion`,
:mod:`.hydra_multirun` (each -> :class:`Sweep`), :mod:`.dists` (distributions and their
checks), :mod:`.metrics`, :mod:`.keymap`, :mod:`.convert` (-> :class:`Draft`),
:mod:`.render` (-> text), :mod:`.cli` (``runner import``). Internals of the runner are
reached only through :mod:`._project`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runner.importers.convert import Options, convert
from runner.importers.model import ImportProblem, Param, Pruner, Sweep
from runner.importers.render import Draft, render
from runner.importers.sources import FORMATS, load

__all__ = [
    "FORMATS",
    "Draft",
    "ImportProblem",
    "Imported",
    "Param",
    "Pruner",
    "Sweep",
    "import_sweep",
    "read_sweep",
]


@dataclass
class Imported:
    text: str
    sweep: Sweep
    draft: Draft
    #: what ``runner plan`` reports for the text (empty: it plans as written); None: unchecked
    problems: list[str] | None

    @property
    def warnings(self) -> list[str]:
        return self.draft.warnings

    @property
    def unmapped(self) -> list[str]:
        return self.draft.unmapped


def read_sweep(source: str, fmt: str = "auto", recipe: str = "segmentation") -> Sweep:
    """The source's sweep in its own names (no mapping): for tests and tools."""
    from runner.importers._project import Recipe

    groups = Recipe.load(recipe).groups
    return load(source, fmt, group_options=lambda key: groups.get(key, []))


def import_sweep(
    source: str,
    recipe: str = "segmentation",
    *,
    fmt: str = "auto",
    base: Sequence[str] = (),
    maps: Mapping[str, str] | None = None,
    metric: str | None = None,
    trials: int | None = None,
    name: str | None = None,
    date: str | None = None,
    check: bool = True,
    output_name: str | None = None,
) -> Imported:
    """Import ``source`` (a file, or a Hydra command line as one string) as a matrix of
    ``recipe``. Raises :class:`ImportProblem` (a RunnerError: exit 2) for a source that
    can't be read or leaves nothing to sweep; keys it can't map are kept, commented out."""
    sweep = read_sweep(source, fmt, recipe)
    stem = None
    if output_name:
        stem = output_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    opts = Options(recipe, list(base), dict(maps or {}), metric, trials, name or stem, date)
    if trials is not None and trials < 1:
        raise ImportProblem("--trials", f"expected a positive number of trials, not {trials}")
    draft = convert(sweep, opts)
    live = [e for e in (*draft.axes, *draft.space) if not e.commented]
    swept = [p for p in sweep.params if p.kind in ("grid", "dist")]
    if swept and not live:
        raise ImportProblem(
            sweep.source,
            "nothing left to sweep: no swept key maps to the recipe: "
            + "; ".join(draft.unmapped)
            + " (map them with --map SOURCE=KEY)",
        )
    text = render(draft)
    problems = None
    if check:
        from runner.importers._project import validate_text

        problems = validate_text(text, output_name or f"{draft.name}.yaml")
    return Imported(text, sweep, draft, problems)
