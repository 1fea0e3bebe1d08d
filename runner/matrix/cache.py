"""Remembering that a matrix was valid, so that ``status`` does not compose its configs again.

Validation composes one Hydra config per distinct combination of group choices (seconds on a
large ablation); its verdict depends only on the matrix, the recipe's config files and the
runner's and Hydra's code. Those are hashed into a fingerprint; a valid matrix records it,
with the names a ``run_name`` template gave, in ``<sweep_dir>/<matrix>/validated.json``. A
later plan with the same fingerprint skips the compositions. Any change to the matrix, to a
file of the recipe's config (its search path included) or to that code changes the
fingerprint, and the matrix is validated again.

The record is written only where the matrix's sweep directory already exists (``plan`` on a
matrix that never ran writes nothing), atomically, and a record that can't be read or
written is simply not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from runner.matrix.schema import LoadedMatrix
from runner.recipe import Recipe

FILE = "validated.json"
#: The code whose checks the verdict is: what a cached verdict must have been made by.
_CODE_DIRS = ("matrix", "search")
_CODE_FILES = ("recipe.py", "errors.py")


def _files(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    except OSError:
        return []


def fingerprint(m: LoadedMatrix, recipe: Recipe, cell_ids: Sequence[str]) -> str:
    """What a validation's verdict depends on, hashed. ``cell_ids``: the cells expanded
    (their ids spell every value as Hydra reads it, which the schema's JSON may not: nan)."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    add("matrix", m.spec.model_dump_json().encode())
    add("labels", json.dumps(m.labels, sort_keys=True).encode())
    add("cells", "\n".join(cell_ids).encode())
    add("recipe", f"{recipe.name}:{recipe.config_name}".encode())
    for root in recipe.search_dirs:
        for f in _files(root):
            add(f"conf:{f.relative_to(root)}", f.read_bytes())
    runner_root = Path(__file__).resolve().parents[1]
    code = [runner_root / f for f in _CODE_FILES]
    for d in _CODE_DIRS:
        code += [p for p in _files(runner_root / d) if p.suffix == ".py"]
    for f in code:
        add(f"code:{f.relative_to(runner_root)}", f.read_bytes())
    for dist in ("hydra-core", "omegaconf"):
        try:
            add(dist, metadata.version(dist).encode())
        except metadata.PackageNotFoundError:
            add(dist, b"")
    return h.hexdigest()


@dataclass
class Verdict:
    """What a valid matrix's validation found that later plans reuse."""

    names: dict[str, str]  # cell id -> name from the run_name template (empty: none)
    configs: dict[tuple[str, ...], Any]  # data check's overrides -> composed config


def read(root: Path, key: str) -> Verdict | None:
    """The verdict recorded for a matrix validated with this fingerprint; None when there
    is no such record (or it can't be read)."""
    try:
        data = json.loads((root / FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != key:
        return None
    names, configs = data.get("names"), data.get("configs")
    if not isinstance(names, dict) or not isinstance(configs, list):
        return None
    try:
        return Verdict(names, {tuple(o): c for o, c in configs})
    except (TypeError, ValueError):
        return None


def write(root: Path, key: str, verdict: Verdict) -> None:
    """Record a valid matrix, where its sweep directory exists; never fails."""
    if not root.is_dir():
        return
    record = {
        "fingerprint": key,
        "names": verdict.names,
        "configs": [[list(o), c] for o, c in verdict.configs.items()],
    }
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", dir=root)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, root / FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return  # a read-only or full disk: validate again next time
