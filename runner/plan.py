"""A plan: a validated matrix, its cells, and where their states live.

Every command starts here (``make_plan``): load the matrix file, validate it against the
recipe, expand the cells, and open the ledger under ``sweep_dir``.

Relative paths of a matrix (``sweep_dir``, a sqlite ``tracking.uri``, the cells' working
directory and with it a relative data root) are resolved against the matrix's *project*
(:func:`project_root`), never the caller's working directory: the same matrix file reaches
the same ledger and store from any directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from runner import tracking
from runner.errors import MatrixError, RunnerError
from runner.ledger import CellState, Ledger
from runner.matrix.cells import Cell
from runner.matrix.expand import Expansion
from runner.matrix.load import load_matrix, salvage
from runner.matrix.names import STARTED_FIELD
from runner.matrix.schema import LoadedMatrix
from runner.matrix.validate import validate_matrix
from runner.recipe import Recipe
from runner.search.trials import SearchPlan
from runner.search.trials import build as build_search


@dataclass
class Plan:
    """A validated matrix with its cells and where their states live."""

    matrix: LoadedMatrix
    recipe: Recipe
    expansion: Expansion
    ledger: Ledger
    workdir: Path
    #: A matrix with ``search`` or ``pruner``: its studies, trial slots and restarts. Its
    #: cells (trials, restarts) are ``cells``; the grid's points are in ``grid``.
    search: SearchPlan | None = None
    grid: list[Cell] | None = None

    @property
    def cells(self) -> list[Cell]:
        return self.expansion.cells

    def add_cells(self, cells: list[Cell]) -> None:
        """Cells that came into being during a sweep (asked trials, chosen restarts)."""
        known = {c.id for c in self.expansion.cells}
        self.expansion.cells.extend(c for c in cells if c.id not in known)

    def states(self) -> dict[str, CellState]:
        try:
            return self.ledger.states([c.id for c in self.cells])
        except OSError as exc:
            problem = self.matrix.problem(
                ("sweep_dir",),
                f"cannot read cell states under {self.ledger.root}: {exc.strerror or exc}",
            )
            raise RunnerError(problem.render(self.matrix.file)) from None

    @property
    def tracking_uri(self) -> str:
        return tracking.resolve_uri(self.matrix.spec.tracking.uri, self.workdir)


#: What marks a project's root folder.
PROJECT_MARKERS = ("pyproject.toml", ".git")


def project_root(matrix_file: Path | str) -> Path:
    """The matrix's project: the nearest folder above the matrix file holding
    ``pyproject.toml`` or ``.git``; without one, the matrix file's own folder."""
    here = Path(matrix_file).absolute().parent
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return here


def _with_recipe_problems(matrix_file: Path | str, exc: MatrixError) -> MatrixError:
    """A matrix whose structure fails in a block the recipe's checks don't need (executor,
    tracking, search...) is still checked against the recipe: one run shows every problem."""
    rest = salvage(matrix_file, exc.problems)
    if rest is None:
        return exc
    try:
        validate_matrix(rest)
    except MatrixError as more:
        return MatrixError(exc.file, [*exc.problems, *more.problems])
    return exc


def make_plan(matrix_file: Path | str, workdir: Path | None = None) -> Plan:
    """The plan of ``matrix_file``; ``workdir``: what relative paths resolve against
    (default: the matrix's :func:`project_root`)."""
    workdir = (workdir or project_root(matrix_file)).absolute()
    try:
        m = load_matrix(matrix_file)
    except MatrixError as exc:
        raise _with_recipe_problems(matrix_file, exc) from None
    sweep_dir = Path(m.spec.sweep_dir)
    ledger = Ledger(sweep_dir if sweep_dir.is_absolute() else workdir / sweep_dir, m.spec.name)
    # A matrix that has run remembers it was valid: `status` does not compose it again.
    recipe, expansion = validate_matrix(m, cache_dir=ledger.root)
    grid = expansion.cells
    cells, search = build_search(m, grid, set(recipe.groups), ledger.root)
    if search is not None and m.spec.search is not None:
        expansion = Expansion(cells, expansion.warnings, expansion.data_configs)
    _started_names(expansion.cells, ledger)
    return Plan(m, recipe, expansion, ledger, workdir, search, grid)


def _started_names(cells: list[Cell], ledger: Ledger) -> None:
    """Cells named with ``{started}`` that have started: the name their run got (ledger)."""
    for i, cell in enumerate(cells):
        if STARTED_FIELD in cell.run_name:
            recorded = ledger.cell(cell.id).run_name
            if recorded:
                cells[i] = replace(cell, run_name=recorded)
