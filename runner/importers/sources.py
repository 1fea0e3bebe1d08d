"""Read a source (a file, or a command line given as one string) and tell its format.

YAML and JSON are read with ``yaml.safe_load``, Python with :mod:`ast` (never run). ``auto``
decides by content: ``hydra.sweeper`` or ``hydra/sweeper`` in the defaults -> Hydra; a
``space:`` of prior strings or ``algorithms:`` -> Oríon; ``parameters:`` -> W&B; ``.py``
-> Oríon's ``create_experiment``; text with ``key=value`` words -> a Hydra command line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from runner.importers import hydra_multirun, orion, wandb
from runner.importers.model import ImportProblem, Sweep

FORMATS = ("auto", "wandb", "orion", "hydra")
_PATHLIKE = re.compile(r"^[^\s=]+\.(ya?ml|json|py|txt|sh)$")


def _lines(text: str) -> dict[str, int]:
    """Dotted key path -> line (1-based) of every mapping key in a YAML text."""
    out: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                out.setdefault(key, k.start_mark.line + 1)
                walk(v, key + ".")

    walk(root, "")
    return out


def _line_of(text: str, key: str, is_yaml: bool) -> int | None:
    if not key:
        return None
    if is_yaml:
        lines = _lines(text)
        matches = [ln for path, ln in lines.items() if path == key or path.endswith("." + key)]
        if matches:
            return min(matches)
    last = key.split(".")[-1]
    for i, line in enumerate(text.splitlines(), 1):
        if re.search(rf"(?<![\w.]){re.escape(last)}(?![\w])", line):
            return i
    return None


def _yaml(text: str, label: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ImportProblem(
            label, f"not valid YAML/JSON: {what}", line=mark.line + 1 if mark else None
        ) from None


def detect(data: Any) -> str | None:
    if hydra_multirun.looks_like(data):
        return "hydra"
    if orion.looks_like(data):
        return "orion"
    if wandb.looks_like(data):
        return "wandb"
    return None


def load(
    source: str, fmt: str = "auto", group_options: Callable[[str], list[str]] | None = None
) -> Sweep:
    """The sweep ``source`` describes (a file path, or a Hydra command line)."""
    if fmt not in FORMATS:
        raise ImportProblem(source, f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    path = Path(source)
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        if _PATHLIKE.match(source.strip()) or path.is_dir():
            raise ImportProblem(source, "no such file" if not path.is_dir() else "a directory")
        if fmt not in ("auto", "hydra"):
            raise ImportProblem(
                "command line", f"--format {fmt} reads a file; a command line is a Hydra multirun"
            )
        overrides, notes = hydra_multirun.split_command(source, "command line")
        sweep = hydra_multirun.read(overrides, "command line", group_options=group_options)
        sweep.notes = notes + sweep.notes
        return sweep
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ImportProblem(source, "not a text file") from None
    if not text.strip():
        raise ImportProblem(source, "the file is empty: nothing to import")
    try:
        return _from_text(text, source, fmt, path.suffix.lower(), group_options)
    except ImportProblem as exc:
        is_yaml = path.suffix.lower() in (".yaml", ".yml", ".json")
        raise exc.at(_line_of(text, exc.key, is_yaml)) from None


def _from_text(
    text: str, label: str, fmt: str, suffix: str, group_options: Callable[[str], list[str]] | None
) -> Sweep:
    if suffix == ".py" or (fmt == "orion" and "create_experiment" in text):
        data, objective = orion.from_python(text, label)
        return orion.read(data, label, objective)
    try:
        data = _yaml(text, label)
    except ImportProblem:
        if fmt in ("auto", "orion") and text.lstrip().startswith(("{", "dict(")):
            data, objective = orion.from_python(text, label)
            return orion.read(data, label, objective)
        if fmt in ("auto", "hydra") and "=" in text:
            data = None
        else:
            raise
    kind = fmt if fmt != "auto" else detect(data)
    if kind is None and not isinstance(data, dict) and "=" in text:
        kind = "hydra-command"
    if kind == "hydra" and not isinstance(data, dict):
        kind = "hydra-command"
    if kind == "hydra-command":
        overrides, notes = hydra_multirun.split_command(text, label)
        sweep = hydra_multirun.read(overrides, label, group_options=group_options)
        sweep.notes = notes + sweep.notes
        return sweep
    if kind == "hydra":
        params, settings = hydra_multirun.from_config(data)
        sweep = hydra_multirun.read(params, label, settings, group_options)
        sweep.notes.append("the rest of the config (your training defaults) is not imported")
        return sweep
    if kind == "orion":
        return orion.read(data, label)
    if kind == "wandb":
        return wandb.read(data, label)
    raise ImportProblem(
        label,
        "not a W&B sweep (parameters:), an Oríon experiment (space:, "
        "algorithms:) nor a Hydra sweep (hydra.sweeper or a -m command line); "
        "name it with --format",
    )
