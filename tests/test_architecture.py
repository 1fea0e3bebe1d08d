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


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert big == {}


def test_the_runner_top_level_reads_at_a_glance() -> None:
    top = sorted(p.name for p in (ROOT / "runner").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_an_executor_kind_is_one_registry_line() -> None:
    """Every kind in the registry resolves to an options model and a backend whose ``kind``
    matches, and the matrix schema accepts exactly these kinds."""
    from runner.executors import KINDS, _load
    from runner.matrix.schema import EXECUTOR_KINDS

    assert tuple(KINDS) == EXECUTOR_KINDS
    for kind, entry in KINDS.items():
        options, backend = _load(entry.options), _load(entry.backend)
        assert get_args(options.model_fields["kind"].annotation) == (kind,)
        assert backend.kind == kind
