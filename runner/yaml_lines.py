"""Safe YAML loading that remembers the line of every key and list item.

PyYAML's safe loader forgets positions once it builds Python objects; error messages need
them, so we compose the node graph ourselves and record ``path -> line`` on the way.
Also: ``1e-3`` is read as a float (YAML 1.1 would make it a string, which surprises
everyone writing learning rates), and duplicate keys are an error instead of "last wins".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from runner.errors import MatrixError, Problem

Path_ = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    pass


# Accept 1e-3 / 3E+4 as floats, as YAML 1.2 and every researcher does.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct(
    loader: _Loader, node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[Problem]
) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                problems.append(
                    Problem(
                        _dotted(path), "a key must be a plain value", key_node.start_mark.line + 1
                    )
                )
                continue
            if key in out:
                problems.append(
                    Problem(_dotted((*path, key)), "duplicate key", key_node.start_mark.line + 1)
                )
                continue
            out[key] = _construct(loader, value_node, (*path, key), lines, problems)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(loader, item, (*path, i), lines, problems)
            for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def _dotted(path: Path_) -> str:
    parts: list[str] = []
    for p in path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def dotted(path: Path_) -> str:
    """('axes', 'model', 1) -> 'axes.model[1]'."""
    return _dotted(path)


def load_yaml(file: Path) -> tuple[Any, dict[Path_, int]]:
    """Read ``file`` as YAML; return the data and the line of each path in it."""
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise MatrixError(file, [Problem("", "file not found")]) from None
    except IsADirectoryError:
        raise MatrixError(
            file, [Problem("", "is a directory, expected a matrix YAML file")]
        ) from None
    except OSError as exc:
        raise MatrixError(file, [Problem("", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MatrixError(
            file, [Problem("", f"not valid UTF-8 (byte {exc.start})", line)]
        ) from None
    lines: dict[Path_, int] = {}
    problems: list[Problem] = []
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = _construct(loader, node, (), lines, problems) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise MatrixError(file, [Problem("", f"YAML syntax error: {reason}", line)]) from None
    except yaml.YAMLError as exc:
        raise MatrixError(file, [Problem("", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise MatrixError(file, [Problem("", "YAML nested too deeply")]) from None
    if problems:
        raise MatrixError(file, problems)
    return data, lines
