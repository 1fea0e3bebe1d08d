"""The matrix file's schema (pydantic): keys, types and defaults.

:mod:`runner.matrix.load` reads a file into it and turns pydantic's errors into problems
that point at lines; whether axis values exist in the recipe's config groups is checked in
:mod:`runner.matrix.validate`, and cells come from :mod:`runner.matrix.expand`. The
``executor`` block is validated by the options model of its kind (:mod:`runner.executors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from runner.errors import Problem, did_you_mean
from runner.executors.options import OPTIONS
from runner.matrix import cv as nested
from runner.matrix.names import parse_template
from runner.matrix.on_oom import OnOom
from runner.matrix.space import check as check_distribution
from runner.matrix.yaml_lines import Path_, dotted

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_CELLS = 100_000

Scalar = str | int | float | bool | None
Value = Scalar | list[Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


EXECUTOR_KINDS = tuple(OPTIONS)
EXECUTOR_MODELS = OPTIONS
ExecutorOptions = Annotated[
    Union[tuple(EXECUTOR_MODELS.values())],  # noqa: UP007 - built from the registry
    Field(discriminator="kind"),
]


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


#: The recipe key the pruner's epochs are: schedules are defined over it, so a pruned run is
#: a prefix of the full run.
FIDELITY_KEY = "training.max_epochs"
METRIC_PATTERN = r"^[A-Za-z0-9_./-]{1,200}$"
#: Search methods whose trials after ``startup`` are asked from the results so far.
MODEL_BASED = ("tpe", "gp")
Distribution = Annotated[str, BeforeValidator(check_distribution)]


class SearchOptions(_Strict):
    """Sampled trials instead of (or within each point of) the grid; see runner.search."""

    space: dict[str, Distribution] = Field(min_length=1)
    #: gp: Optuna's GPSampler, the closest to W&B's "bayes" (a Gaussian process, expected
    #: improvement); tpe: Optuna's default, cheaper per ask and better with many categoricals.
    method: Literal["random", "tpe", "gp", "grid"] = "tpe"
    trials: PositiveInt | None = Field(None, description="required but for grid (default: all)")
    seed: int = Field(0, ge=0, lt=2**63)
    metric: str = Field("val_dice", pattern=METRIC_PATTERN)
    mode: Literal["max", "min"] = "max"
    batch: PositiveInt | None = Field(None, description="trials per SLURM array chunk")
    startup: PositiveInt | None = Field(None, description="tpe, gp: random trials first")


class PrunerOptions(_Strict):
    """Asynchronous successive halving over epochs (runner.matrix.asha)."""

    kind: Literal["asha"]
    min_epochs: PositiveInt
    max_epochs: PositiveInt
    reduction_factor: int = Field(4, ge=2, le=100)  # Optuna's and Orion's default
    brackets: PositiveInt = 1
    metric: str | None = Field(None, pattern=METRIC_PATTERN)
    mode: Literal["max", "min"] | None = None
    #: Oríon's placement: this many rungs log-spaced from min_epochs to max_epochs (the last
    #: is max_epochs); or the rungs' epochs themselves. Neither: min_epochs * eta^k.
    num_rungs: int | None = Field(None, ge=2, le=64)
    rungs: list[PositiveInt] | None = Field(None, min_length=1, max_length=64)


class RestartOptions(_Strict):
    """After the search: ``seeds`` runs of each of the ``top`` best configurations (times
    ``axes``, e.g. the folds); the report keeps the best restart of each."""

    seeds: PositiveInt = Field(le=1000)
    top: PositiveInt = 1
    axes: dict[str, list[Value]] = Field(default_factory=dict)


class ReportOptions(_Strict):
    """What ``runner report`` compares with when its command line names no baseline: a
    per-class statistics CSV (runner.report.baseline), relative to the project."""

    baseline_csv: str | None = None
    baseline_n: PositiveInt | None = Field(None, description="runs per CSV row, if no n column")
    baseline_std_ddof: Literal[0, 1] = Field(1, description="0: the CSV's std is np.std's")


class Matrix(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    recipe: str
    base: list[str] = Field(default_factory=list)
    axes: dict[str, list[Value]] = Field(default_factory=dict)
    zip: list[list[str]] = Field(default_factory=list)
    exclude: list[dict[str, Value]] = Field(default_factory=list)
    include: list[dict[str, Value]] = Field(default_factory=list)
    executor: ExecutorOptions = Field(default_factory=lambda: EXECUTOR_MODELS["local"]())
    tracking: TrackingOptions = Field(default_factory=TrackingOptions)
    sweep_dir: str = Field("sweeps", description="where cell states and logs live")
    search: SearchOptions | None = None
    pruner: PrunerOptions | None = None
    restarts: RestartOptions | None = None
    cv: nested.CvOptions | None = None  # nested cross-validation (runner.matrix.cv)
    #: Out-of-memory remedies (runner.matrix.on_oom): what a cell that ran out of memory is
    #: tried again with, by `runner resume --only oom` or at once (auto).
    on_oom: OnOom | None = None
    report: ReportOptions = Field(default_factory=ReportOptions)
    run_name: str | None = Field(
        None, description="a template such as '{model}_{optimizer}{optimizer.lr}_s{seed}'"
    )
    #: Metrics the MLflow view shows first, in this order (runner.report.mlflow_view).
    metrics: list[Annotated[str, Field(pattern=METRIC_PATTERN)]] = Field(default_factory=list)

    @field_validator("run_name")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            parse_template(value)  # its keys are checked against the recipe's config later
        return value

    @model_validator(mode="after")
    def _pruner_sets_the_epochs(self) -> Matrix:
        """Every cell of a pruned matrix trains over the pruner's max_epochs (a conflicting
        value in base is reported by runner.matrix.search_checks, with its line)."""
        if self.pruner is None:
            return self
        if any(b.lstrip("+").partition("=")[0] == FIDELITY_KEY for b in self.base):
            return self
        return self.model_copy(
            update={"base": [*self.base, f"{FIDELITY_KEY}={self.pruner.max_epochs}"]}
        )

    @model_validator(mode="after")
    def _cv_sets_the_inner_folds(self) -> Matrix:
        """Every cell of a ``cv`` matrix splits its outer fold's training subjects into the
        inner folds (a base that sets these keys too is reported by runner.matrix.cv_checks)."""
        if self.cv is None:
            return self
        own = {b.lstrip("+").partition("=")[0] for b in self.base}
        extra = [o for o in nested.base_overrides(self.cv) if o.partition("=")[0] not in own]
        return self.model_copy(update={"base": [*self.base, *extra]}) if extra else self

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
    #: the labels of axes written as ``{label: value}`` (see runner.matrix.cells)
    labels: dict[str, dict[str, str]] = {}

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
