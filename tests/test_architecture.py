"""The shape of the code, checked: data flows one way (matrix -> sweep -> executors ->
recipes -> MLflow), recipes never import the runner, no import cycles (imports inside
functions count), small modules, and a runner/ whose top a newcomer can read."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from tests.conftest import ROOT

PACKAGES = ("runner", "recipes")
MAX_LINES = 400
MAX_TOP_MODULES = 12


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module name this file imports, at any depth (functions, TYPE_CHECKING too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                deps.add(imported)
        graph[name] = deps
    return graph


def test_recipes_never_import_the_runner() -> None:
    offenders = {m: sorted(d for d in deps if d.split(".")[0] == "runner")
                 for m, deps in _graph().items() if m.startswith("recipes")}  # fmt: skip
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_runner_reaches_recipes_only_through_the_contract() -> None:
    """The runner knows a recipe by its package (CONFIG_DIR, TRAIN) and recipes.contract;
    never by its components."""
    reach = {
        m: sorted(
            d for d in deps if d.startswith("recipes") and d not in ("recipes", "recipes.contract")
        )
        for m, deps in _graph().items()
        if m.startswith("runner")
    }
    assert {m: d for m, d in reach.items() if d} == {}


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


#: The runner's folders as layers, lowest first: a module imports only from its own layer or
#: below (data flows matrix -> plan -> sweep -> executors -> job -> recipes; report reads
#: the ledger and MLflow, never the executing side). The executors' options (pydantic only)
#: and resources (what a machine offers) are declarations the matrix schema validates with.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("runner", "runner.errors", "runner.ledger", "runner.tracking", "runner.recipe"),
    (
        "runner.executors",
        "runner.executors.options",
        "runner.executors.resources",
        "runner.executors.*.options",
    ),
    ("runner.matrix",),
    ("runner.search",),
    ("runner.plan",),
    ("runner.report",),
    ("runner.testtime",),
    ("runner.job",),
    ("runner.executors.*",),
    ("runner.sweep",),
    ("runner.importers",),
    ("runner.cli", "runner.__main__"),
)


def _layer(module: str) -> int:
    """The layer of ``module``: the most specific pattern that names it or a package above
    it (``*`` stands for one name)."""
    best, depth = -1, -1
    for i, patterns in enumerate(LAYERS):
        for pattern in patterns:
            parts, names = pattern.split("."), module.split(".")
            exact = pattern == "runner.executors" or pattern == "runner"
            if exact and module != pattern:
                continue
            named = all(p in ("*", n) for p, n in zip(parts, names[: len(parts)], strict=False))
            if len(names) >= len(parts) and named and len(parts) > depth:
                best, depth = i, len(parts)
    return best


def test_the_runner_reads_one_way_through_its_layers() -> None:
    graph = _graph()
    runner = {m: d for m, d in graph.items() if m.split(".")[0] == "runner"}
    unplaced = sorted(m for m in runner if _layer(m) < 0)
    assert unplaced == [], "add these to LAYERS"
    upward = {
        m: sorted(d for d in deps if d.split(".")[0] == "runner" and _layer(d) > _layer(m))
        for m, deps in runner.items()
    }
    assert {m: d for m, d in upward.items() if d} == {}


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert big == {}


def test_the_runner_top_level_reads_at_a_glance() -> None:
    top = sorted(p.name for p in (ROOT / "runner").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_an_executor_kind_is_one_line_in_each_registry() -> None:
    """Every kind has an options model and a backend whose ``kind`` matches, the matrix
    schema accepts exactly these kinds, and the options import no backend."""
    from runner.executors.backends import BACKENDS
    from runner.executors.options import OPTIONS
    from runner.matrix.schema import EXECUTOR_KINDS

    assert tuple(OPTIONS) == EXECUTOR_KINDS and set(BACKENDS) == set(OPTIONS)
    for kind, options in OPTIONS.items():
        assert get_args(options.model_fields["kind"].annotation) == (kind,)
        assert BACKENDS[kind].kind == kind
        assert callable(options.cell_gpus)


def test_attempt_files_are_read_and_written_as_typed_records() -> None:
    """The runner touches an attempt's files only through the records of
    runner.ledger.records (``Attempt.load`` / ``Attempt.save``): one reader and writer each,
    never a dict keyed by file name."""
    from runner.ledger import records

    files = {
        cls.FILE
        for cls in vars(records).values()
        if isinstance(cls, type) and issubclass(cls, records.Record) and cls is not records.Record
    }
    assert {"claim", "job", "status", "heartbeat", "monitor", "cancel", "slurm", "docker"} <= files
    raw = []
    for name, path in _modules().items():
        if not name.startswith("runner") or name.startswith("runner.ledger"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("read", "write")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in files
            ):
                raw.append(f"{name}:{node.lineno}")
    assert raw == []
