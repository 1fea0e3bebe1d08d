"""Loading a matrix file into a validated :class:`~runner.matrix.schema.LoadedMatrix`, with
every structural problem reported at once, each pointing at its line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from runner.errors import MatrixError, Problem, did_you_mean, format_choices
from runner.matrix import cv as nested
from runner.matrix.cells import value_key
from runner.matrix.names import LABEL_PATTERN
from runner.matrix.schema import EXECUTOR_KINDS, EXECUTOR_MODELS, LoadedMatrix, Matrix
from runner.matrix.yaml_lines import Path_, dotted, load_yaml


def _fields_at(loc: Path_) -> list[str]:
    """Valid keys of the model found at ``loc`` (for 'did you mean')."""
    model: Any = Matrix
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        # ``SearchOptions | None``: the model inside the optional.
        members = [annotation, *get_args(annotation)]
        model = next((a for a in members if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(getattr(model, "model_fields", {}))


_VALUE_KEYS = ("axes", "include", "exclude")


def _value_base(loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The loc of a value under an axis-like key (``axes.k[i]``, ``restarts.axes.k[i]``),
    when pydantic has appended a union member's name to it; else None."""
    if loc and loc[0] in _VALUE_KEYS and len(loc) > 3:
        return loc[:3]
    if loc[:2] == ("restarts", "axes") and len(loc) > 4:
        return loc[:4]
    return None


def _collapse_unions(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic reports a value that fits no member of ``Scalar | list`` once per member,
    with the member's name in the loc; make that one error at the value's own loc."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        base = _value_base(loc)
        if base is not None:
            got = err.get("input")
            out[base] = {
                **err,
                "loc": base,
                "type": "value_type",
                "msg": "expected a string, number, boolean, null or a list of them",
            }
            if got is not None:
                out[base]["input"] = got
        else:
            out.setdefault(loc, err)
    return list(out.values())


def _problem_from_pydantic(err: dict[str, Any], lines: dict[Path_, int], data: Any) -> Problem:
    # Pydantic inserts union member names ('local', 'function-after...') into locs; drop them.
    loc: Path_ = tuple(
        p
        for p in err["loc"]
        if not (isinstance(p, str) and p in EXECUTOR_KINDS and err["loc"][0] == "executor")
    )
    kind = err["type"]
    got = err.get("input")
    line = None
    p = loc
    while p and line is None:
        line = lines.get(p)
        p = p[:-1]
    if kind == "extra_forbidden":
        valid = _executor_fields(data) if loc[:1] == ("executor",) else _fields_at(loc[:-1])
        msg = f"unknown key '{loc[-1]}'; valid keys: {format_choices(valid)}"
        return Problem(dotted(loc), msg + did_you_mean(loc[-1], valid), line)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = got.get("kind") if isinstance(got, dict) else None
        msg = f"unknown executor kind {tag!r}; valid choices: {format_choices(EXECUTOR_KINDS)}"
        return Problem("executor.kind", msg + did_you_mean(tag, EXECUTOR_KINDS), line)
    if kind == "string_pattern_mismatch" and loc == ("name",):
        msg = (
            f"invalid name {got!r}: use lower-case letters, digits, '_' and '-' "
            "(it becomes a directory and the MLflow experiment name)"
        )
        return Problem("name", msg, line)
    if kind == "missing":
        return Problem(dotted(loc), "required key is missing", line)
    if kind == "literal_error":
        valid = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        msg = f"invalid value {got!r}; valid choices: {format_choices(valid)}"
        return Problem(dotted(loc), msg + did_you_mean(got, valid), line)
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = err["msg"]
    msg = msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg.lower()
    return Problem(dotted(loc), f"{msg}, got {shown}", line)


def _executor_fields(data: Any) -> list[str]:
    ex = data.get("executor") if isinstance(data, dict) else None
    kind = ex.get("kind", "local") if isinstance(ex, dict) else "local"
    model = EXECUTOR_MODELS.get(kind)
    return list(model.model_fields) if model else []


def _labelled_axes(
    data: dict[str, Any], lines: dict[Path_, int]
) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    """Axes written as ``{label: value}`` become lists of their values (what ids and
    overrides are made of), their labels kept for run names; each value keeps its line, at
    the position it now has."""
    axes = data.get("axes")
    labels: dict[str, dict[str, str]] = {}
    problems: list[Problem] = []
    if not isinstance(axes, dict):
        return labels, problems
    for name, choices in list(axes.items()):
        if not isinstance(choices, dict):
            continue
        own: dict[str, str] = {}
        for i, (label, value) in enumerate(choices.items()):
            line = lines.get(("axes", name, label))
            if line is not None:
                lines[("axes", name, i)] = line
            if not LABEL_PATTERN.match(label):
                problems.append(
                    Problem(
                        dotted(("axes", name, label)),
                        f"invalid label {label!r}: use letters, digits, '.', '+' and '-' "
                        "(at most 40; '_' separates the parts of a run name)",
                        line,
                    )
                )
            own[value_key(value)] = label
        labels[name] = own
        axes[name] = list(choices.values())
    return labels, problems


#: Top-level blocks the recipe's checks don't need: with a problem in one of them, the rest
#: of the matrix can still be checked against the recipe, so that one run of `plan` shows
#: every problem (:func:`salvage`).
SET_ASIDE = (
    "executor",
    "tracking",
    "sweep_dir",
    "run_name",
    "search",
    "pruner",
    "restarts",
    "on_oom",
)


def salvage(file: Path | str, problems: list[Problem]) -> LoadedMatrix | None:
    """The matrix without the blocks whose structure failed (each at its default), when all
    of them can be set aside; None when a problem lies elsewhere (name, recipe, axes...)."""
    blocks = {p.key.split(".")[0].split("[")[0] for p in problems}
    if not blocks or not blocks <= set(SET_ASIDE):
        return None
    data, lines = load_yaml(Path(file))
    if not isinstance(data, dict):
        return None
    kept = {k: v for k, v in data.items() if k not in blocks}
    labels, _ = _labelled_axes(kept, lines)
    try:
        spec = Matrix.model_validate(kept)
    except ValidationError:
        return None
    return LoadedMatrix(spec=spec, file=Path(file), lines=lines, labels=labels)


def load_matrix(file: Path | str) -> LoadedMatrix:
    """Parse and structurally validate a matrix file; raise MatrixError listing every problem."""
    file = Path(file)
    data, lines = load_yaml(file)
    if not isinstance(data, dict):
        what = "an empty file" if data is None else f"a {type(data).__name__}"
        raise MatrixError(
            file, [Problem("", f"expected a mapping with keys name, recipe, axes; got {what}", 1)]
        )
    if isinstance(data.get("executor"), dict) and "kind" not in data["executor"]:
        data["executor"] = {"kind": "local", **data["executor"]}
    labels, problems = _labelled_axes(data, lines)
    try:
        spec = Matrix.model_validate(data)
    except ValidationError as exc:
        errors = _collapse_unions(list(exc.errors()))
        problems += [_problem_from_pydantic(e, lines, data) for e in errors]
    if problems:
        raise MatrixError(file, problems) from None
    if spec.cv is not None:  # the outer folds read outer0, outer1, ... in run names
        folds = nested.outer_values(spec.cv)
        labels[nested.KEY] = {value_key(v): nested.label(k) for k, v in enumerate(folds)}
    return LoadedMatrix(spec=spec, file=file, lines=lines, labels=labels)
