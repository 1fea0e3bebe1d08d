"""The runner internals the importers use, in one place: the matrix schema, the search
space's parser, the recipe, and the validation ``runner plan`` runs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from runner.errors import RunnerError
from runner.matrix.schema import FIDELITY_KEY, NAME_PATTERN, PrunerOptions, SearchOptions
from runner.matrix.space import parse as parse_distribution
from runner.recipe import Composer, Recipe

__all__ = [
    "FIDELITY_KEY",
    "NAME_PATTERN",
    "Composer",
    "Recipe",
    "parse_distribution",
    "pruner_accepts",
    "search_methods",
    "validate_text",
]


def search_methods() -> tuple[str, ...]:
    """The samplers ``search.method`` accepts (random, tpe, gp, grid)."""
    return tuple(get_args(SearchOptions.model_fields["method"].annotation))


def pruner_accepts(fields: dict[str, Any]) -> bool:
    """Whether the pruner schema takes these extra fields (``rungs``, ``num_rungs``...)."""
    try:
        PrunerOptions(kind="asha", min_epochs=1, max_epochs=1000, **fields)
    except (ValidationError, TypeError):
        return False
    return True


def validate_text(text: str, name: str = "imported.yaml") -> list[str]:
    """The problems ``runner plan`` would report for this matrix text (empty: it plans).
    Validated in a scratch directory, so no ledger or cache is written."""
    from runner.matrix.load import load_matrix
    from runner.matrix.validate import validate_matrix

    with tempfile.TemporaryDirectory(prefix="runner-import-") as tmp:
        path = Path(tmp) / Path(name).name
        path.write_text(text)
        try:
            validate_matrix(load_matrix(path))
        except RunnerError as exc:
            return [line.replace(str(path), name) for line in str(exc).splitlines() if line]
    return []
