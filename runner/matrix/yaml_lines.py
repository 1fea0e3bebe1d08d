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


MAX_DEPTH = 40  # a matrix is shallow; deeper input is a mistake or an attack
MAX_NODES = 200_000  # bounds alias expansion ("billion laughs")
_STANDARD_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Builder:
    """Builds Python objects from the node graph, recording lines and refusing anything a
    matrix never needs: custom tags, non-string keys, deep nesting, alias bombs."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.lines: dict[Path_, int] = {}
        self.problems: list[Problem] = []
        self.nodes = 0

    def _fail(self, path: Path_, message: str, node: yaml.Node) -> None:
        raise _Abort(Problem(_dotted(path), message, node.start_mark.line + 1))

    def build(self, node: yaml.Node, path: Path_ = ()) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self._fail(
                path, f"the YAML expands to over {MAX_NODES:,} values (an alias bomb?)", node
            )
        if len(path) > MAX_DEPTH:
            self._fail(path, f"nested deeper than {MAX_DEPTH} levels", node)
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and (
            node.tag not in _STANDARD_TAGS
        ):
            self._fail(path, f"unsupported YAML tag {node.tag!r}: only plain YAML is read", node)
        if isinstance(node, yaml.MappingNode):
            # A key written beside a merge (`{<<: *anchor, seed: 7}`) overrides the merged
            # one, as YAML's merge defines; two written keys are still a duplicate.
            written = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
            self.loader.flatten_mapping(node)
            out: dict[str, Any] = {}
            merged: set[str] = set()
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    self.problems.append(
                        Problem(
                            _dotted(path),
                            f"keys must be strings; got {type(key).__name__} {key!r} (quote it)",
                            line,
                        )
                    )
                    continue
                if key in out and not (key in merged and id(key_node) in written):
                    self.problems.append(Problem(_dotted((*path, key)), "duplicate key", line))
                    continue
                if id(key_node) not in written:
                    merged.add(key)
                else:
                    merged.discard(key)
                out[key] = self.build(value_node, (*path, key))
                self.lines[(*path, key)] = line
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self._fail(path, "a key must be a plain value", node)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            self._fail(
                path, f"cannot read {node.value[:60]!r} as {node.tag.rsplit(':', 1)[-1]}", node
            )


class _Abort(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


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
    builder = None
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            builder = _Builder(loader)
            data = builder.build(node) if node is not None else None
        except RecursionError:
            line = loader.get_mark().line + 1  # where the reader had got to
            raise MatrixError(file, [Problem("", "YAML nested too deeply", line)]) from None
        finally:
            loader.dispose()
    except _Abort as abort:
        raise MatrixError(file, [abort.problem]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise MatrixError(file, [Problem("", f"YAML syntax error: {reason}", line)]) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise MatrixError(
            file, [Problem("", f"unacceptable character {char} in the file", line)]
        ) from None
    except yaml.YAMLError as exc:
        raise MatrixError(file, [Problem("", f"YAML error: {str(exc).splitlines()[0]}")]) from None
    except RecursionError:
        raise MatrixError(file, [Problem("", "YAML nested too deeply")]) from None
    assert builder is not None or data is None
    if builder is not None and builder.problems:
        raise MatrixError(file, builder.problems)
    return data, (builder.lines if builder else {})


def load_value(text: str) -> Any:
    """One YAML value read the way a matrix is (``1e-3`` is a float, no tags, no aliases
    bombs): for values written inside strings, such as a distribution's arguments."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return _Builder(loader).build(node) if node is not None else None
    except _Abort as abort:
        raise ValueError(abort.problem.message) from None
    finally:
        loader.dispose()
