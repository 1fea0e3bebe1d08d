"""The matrix file: its schema, and loading it into a validated :class:`Matrix`.

Structure and types are checked here (pydantic); whether axis values exist in the recipe's
config groups is checked in :mod:`runner.validate`, and cells come from :mod:`runner.expand`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from runner.errors import MatrixError, Problem, did_you_mean, format_choices
from runner.executors.docker_options import DockerExecutorOptions
from runner.executors.slurm_options import SlurmExecutorOptions
from runner.yaml_lines import Path_, dotted, load_yaml

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_CELLS = 100_000

Scalar = str | int | float | bool | None
Value = Scalar | list[Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalExecutorOptions(_Strict):
    """Cells run as local processes through submitit's LocalExecutor."""

    kind: Literal["local"] = "local"
    slots: PositiveInt = Field(1, description="cells running at once")
    gpus: list[int] | None = Field(
        None, description="GPU ids handed out one per running cell; None = all visible GPUs"
    )
    threads_per_cell: PositiveInt | None = Field(
        None, description="torch/OpenMP threads per cell; None = cores // slots"
    )
    timeout_min: PositiveInt = Field(7 * 24 * 60, description="wall-clock limit per cell")


class DebugExecutorOptions(_Strict):
    """Cells run one after another inside the runner process (breakpoints work)."""

    kind: Literal["debug"]


ExecutorOptions = Annotated[
    LocalExecutorOptions | DebugExecutorOptions | SlurmExecutorOptions | DockerExecutorOptions,
    Field(discriminator="kind"),
]
EXECUTOR_KINDS = ("local", "debug", "slurm", "docker")


TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class TrackingOptions(_Strict):
    uri: str = Field("sqlite:///mlruns.db", description="any MLflow tracking URI")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if "\0" in uri or not uri.strip():
            raise ValueError("expected an MLflow tracking URI or a directory path")
        scheme = urlparse(uri).scheme.split("+")[0]
        if "://" in uri and scheme not in TRACKING_SCHEMES:
            raise ValueError(
                f"unknown tracking URI scheme {scheme!r}; valid schemes: "
                f"{', '.join(TRACKING_SCHEMES)}{did_you_mean(scheme, TRACKING_SCHEMES)}"
            )
        if scheme in ("http", "https"):
            parsed = urlparse(uri)  # .port raises on a malformed port
            if not parsed.hostname or (
                parsed.port is None and ":" in parsed.netloc.rsplit("]", 1)[-1]
            ):
                raise ValueError(f"malformed server address {uri!r}")
        return uri


class Matrix(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    recipe: str
    base: list[str] = Field(default_factory=list)
    axes: dict[str, list[Value]] = Field(default_factory=dict)
    zip: list[list[str]] = Field(default_factory=list)
    exclude: list[dict[str, Value]] = Field(default_factory=list)
    include: list[dict[str, Value]] = Field(default_factory=list)
    executor: ExecutorOptions = Field(default_factory=LocalExecutorOptions)
    tracking: TrackingOptions = Field(default_factory=TrackingOptions)
    sweep_dir: str = Field("sweeps", description="where cell states and logs live")

    @field_validator("sweep_dir")
    @classmethod
    def _usable_dir(cls, value: str) -> str:
        if not value or "\0" in value:
            raise ValueError("expected a directory path")
        if any(len(part.encode()) > 255 for part in value.split("/")):
            raise ValueError("a path component is longer than 255 bytes")
        return value


class LoadedMatrix(BaseModel):
    """A validated matrix plus where it came from, for messages that point at lines."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    spec: Matrix
    file: Path
    lines: dict[Path_, int]

    def line(self, *path: str | int) -> int | None:
        """The line of ``path``, or of its closest ancestor that has one."""
        p: Path_ = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    def problem(self, path: Path_, message: str) -> Problem:
        return Problem(dotted(path), message, self.line(*path))


def _fields_at(loc: Path_) -> list[str]:
    """Valid keys of the model found at ``loc`` (for 'did you mean')."""
    model: Any = Matrix
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) else None
    return list(getattr(model, "model_fields", {}))


_VALUE_KEYS = ("axes", "include", "exclude")


def _collapse_unions(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic reports a value that fits no member of ``Scalar | list`` once per member,
    with the member's name in the loc; make that one error at the value's own loc."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        if loc and loc[0] in _VALUE_KEYS and len(loc) > 3:
            base = loc[:3]
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
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = err["msg"]
    msg = msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg.lower()
    return Problem(dotted(loc), f"{msg}, got {shown}", line)


def _executor_fields(data: Any) -> list[str]:
    ex = data.get("executor") if isinstance(data, dict) else None
    kind = ex.get("kind", "local") if isinstance(ex, dict) else "local"
    model = {
        "local": LocalExecutorOptions,
        "debug": DebugExecutorOptions,
        "slurm": SlurmExecutorOptions,
        "docker": DockerExecutorOptions,
    }.get(kind)
    return list(model.model_fields) if model else []


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
    try:
        spec = Matrix.model_validate(data)
    except ValidationError as exc:
        errors = _collapse_unions(list(exc.errors()))
        raise MatrixError(file, [_problem_from_pydantic(e, lines, data) for e in errors]) from None
    return LoadedMatrix(spec=spec, file=file, lines=lines)
