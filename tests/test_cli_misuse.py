"""Misusing the command line: each mistake gives one clear line on stderr, a non-zero exit
and no traceback, from the real process (``python -m runner`` in a scratch directory).

Also the safety defaults: matrix YAML is loaded safely (no python tags run), no ``yaml.load``
without a safe loader anywhere in ``runner/``, and failing commands leave no cell state.
Bugs this suite found are kept as regression tests, each commented with its BUG number.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

GOOD = """\
name: misuse
recipe: segmentation
base: [data=demo]
axes:
  model: [segresnet, unet]
  seed: [0, 1]
"""


def runner(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m runner ARGS`` in ``cwd``, importing this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="replace",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=timeout,
    )


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr}"


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Non-zero exit, no traceback, stderr is exactly one 'error: ...' line with the needles."""
    assert proc.returncode != 0, shown(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, shown(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown(proc)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing\n{shown(proc)}"


def assert_argparse_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """argparse's own message: a usage line, then one 'runner...: error: ...' line; exit 2."""
    assert proc.returncode == 2, shown(proc)
    assert "Traceback" not in proc.stderr and proc.stdout == "", shown(proc)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("usage: runner"), shown(proc)
    assert lines[-1].startswith("runner") and ": error: " in lines[-1], shown(proc)
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} missing\n{shown(proc)}"


def free_port() -> int:
    """A localhost port with nothing listening (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cell_state_files(project: Path) -> list[str]:
    """Anything the ledger would hold for a cell (cells/<id>/...) under any sweep dir."""
    return sorted(str(p.relative_to(project)) for p in project.rglob("cells") if p.is_dir())


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def test_no_arguments(tmp_path: Path) -> None:
    """`runner` alone: argparse asks for a command; exit 2."""
    assert_argparse_error(runner(cwd=tmp_path), "required", "COMMAND")


def test_unknown_command(tmp_path: Path) -> None:
    """`runner swep m.yaml`: argparse names the bad choice and the valid ones; exit 2."""
    proc = runner("swep", "m.yaml", cwd=tmp_path)
    assert_argparse_error(proc, "invalid choice: 'swep'", "'sweep'")


def test_missing_matrix_argument_and_unknown_option(tmp_path: Path) -> None:
    """`runner plan` without a matrix, and with an option it does not know: exit 2."""
    assert_argparse_error(runner("plan", cwd=tmp_path), "required: matrix")
    (tmp_path / "m.yaml").write_text(GOOD)
    assert_argparse_error(runner("plan", "m.yaml", "--bogus", cwd=tmp_path), "--bogus")


@pytest.mark.parametrize("command", ["plan", "status", "sweep", "resume", "cancel"])
def test_missing_matrix_file(tmp_path: Path, command: str) -> None:
    """A matrix path that does not exist: one line naming it, exit 2, nothing written."""
    proc = runner(command, "nope.yaml", cwd=tmp_path)
    assert_one_error_line(proc, "nope.yaml: file not found")
    assert proc.returncode == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["plan", "sweep"])
def test_directory_as_matrix(tmp_path: Path, command: str) -> None:
    """A directory where the matrix file should be: one line naming it, exit 2."""
    (tmp_path / "conf").mkdir()
    proc = runner(command, "conf", cwd=tmp_path)
    assert_one_error_line(proc, "conf: is a directory")
    assert proc.returncode == 2
    assert [p.name for p in tmp_path.iterdir()] == ["conf"]


# --------------------------------------------------------------------------------------------
# Commands that are not errors
# --------------------------------------------------------------------------------------------


def test_status_of_a_matrix_never_swept(tmp_path: Path) -> None:
    """`runner status` before any sweep: exit 0, every cell pending, nothing written."""
    (tmp_path / "m.yaml").write_text(GOOD)
    proc = runner("status", "m.yaml", cwd=tmp_path)
    assert proc.returncode == 0, shown(proc)
    assert "4 cells: 4 pending" in proc.stdout, shown(proc)
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr, shown(proc)

    proc = runner("status", "m.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 0, shown(proc)
    cells = json.loads(proc.stdout)["cells"]
    assert len(cells) == 4 and {c["state"] for c in cells} == {"pending"}, cells
    assert [p.name for p in tmp_path.iterdir()] == ["m.yaml"]


# --------------------------------------------------------------------------------------------
# Tracking server
# --------------------------------------------------------------------------------------------


def _matrix_with_uri(tmp_path: Path, uri: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(GOOD + f"tracking: {{uri: '{uri}'}}\n")
    return path


def test_sweep_with_unreachable_tracking_server(tmp_path: Path) -> None:
    """`runner sweep` against a port where nothing listens fails fast (< 15 s) with one line
    naming the URI, and records no cell state (no cells/ under sweeps/, no mlruns.db)."""
    uri = f"http://127.0.0.1:{free_port()}"
    _matrix_with_uri(tmp_path, uri)
    start = time.monotonic()
    proc = runner("sweep", "m.yaml", cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"took {elapsed:.1f}s\n{shown(proc)}"
    assert_one_error_line(proc, uri, "does not answer")
    assert cell_state_files(tmp_path) == [], shown(proc)
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlartifacts").exists()


# Regression (found by fuzzing, fixed): BUG-17: sweep with an unreachable server left an empty
# sweeps/<name>/logs/ behind (the backend was made before the server was checked).
def test_sweep_with_unreachable_tracking_server_writes_nothing(tmp_path: Path) -> None:
    _matrix_with_uri(tmp_path, f"http://127.0.0.1:{free_port()}")
    proc = runner("sweep", "m.yaml", cwd=tmp_path, timeout=60)
    assert proc.returncode != 0, shown(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


def test_debug_executor_refuses_no_wait_and_writes_nothing(tmp_path: Path) -> None:
    """`debug` runs cells in the sweep's own process: there is nothing to leave running."""
    (tmp_path / "m.yaml").write_text(GOOD + "executor: {kind: debug}\n")
    proc = runner("sweep", "--no-wait", "m.yaml", cwd=tmp_path, timeout=60)
    assert_one_error_line(proc, "executor 'debug'", "drop --no-wait")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


# Regression (found by fuzzing, fixed): BUG-14: a malformed http(s) tracking.uri escapes
# track.check_reachable, which catches only URLError/OSError: http.client.InvalidURL
# ('nonnumeric port') or ValueError ('Invalid IPv6 URL') ends `runner sweep` with a traceback
# and exit 1
@pytest.mark.parametrize("uri", ["http://127.0.0.1:notaport", "http://[::1", "http://exa mple.org"])
def test_sweep_with_malformed_http_uri(tmp_path: Path, uri: str) -> None:
    _matrix_with_uri(tmp_path, uri)
    proc = runner("sweep", "m.yaml", cwd=tmp_path, timeout=60)
    assert_one_error_line(proc, uri)
    assert cell_state_files(tmp_path) == []


# Regression (found by fuzzing, fixed): BUG-15: a tracking.uri MLflow cannot open (unknown
# scheme, sqlite file under a missing directory) raises from track.ensure_experiment
# (MlflowException, UnsupportedModelRegistryStoreURIException, FileNotFoundError): traceback,
# exit 1; plan accepts the URI without a word
@pytest.mark.parametrize("uri", ["bogus-scheme://x", "sqlite:////proc/no/such/dir/m.db"])
def test_sweep_with_unusable_tracking_uri(tmp_path: Path, uri: str) -> None:
    _matrix_with_uri(tmp_path, uri)
    proc = runner("sweep", "m.yaml", cwd=tmp_path, timeout=120)
    assert_one_error_line(proc, uri)
    assert cell_state_files(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Recipe names, output paths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe", ["../../etc", "/etc/passwd", "segmentation/../segmentation", "..", "components"]
)
def test_recipe_with_path_characters(tmp_path: Path, recipe: str) -> None:
    """A recipe that is a path (or not a recipe package): one line with the valid choices,
    exit 2; nothing is imported from outside recipes/ and nothing written."""
    (tmp_path / "m.yaml").write_text(GOOD.replace("recipe: segmentation", f"recipe: '{recipe}'"))
    proc = runner("plan", "m.yaml", cwd=tmp_path)
    assert_one_error_line(proc, f"m.yaml:2: recipe: unknown recipe '{recipe}'", "segmentation")
    assert proc.returncode == 2


def test_sweep_with_path_recipe_writes_nothing(tmp_path: Path) -> None:
    """`runner sweep` of `recipe: ../../etc` stops at validation: exit 2, no sweeps/."""
    (tmp_path / "m.yaml").write_text(GOOD.replace("recipe: segmentation", "recipe: ../../etc"))
    proc = runner("sweep", "m.yaml", cwd=tmp_path)
    assert_one_error_line(proc, "unknown recipe '../../etc'")
    assert proc.returncode == 2 and proc.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["m.yaml"]


# Regression (found by fuzzing, fixed): BUG-16: `runner status --format json|parquet -o PATH`
# with PATH in a missing directory raises FileNotFoundError out of main (traceback, exit 1)
@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_status_output_into_missing_directory(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "m.yaml").write_text(GOOD)
    out = "/proc/no/such/dir/cells." + fmt
    proc = runner("status", "m.yaml", "--format", fmt, "-o", out, cwd=tmp_path)
    assert_one_error_line(proc, out)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--format", "json"], ["--watch refreshes the table", "--format json"]),
        (["--interval", "0"], ["--interval: give seconds > 0, not 0"]),
        (["--interval", "-2.5"], ["not -2.5"]),
    ],
)
def test_status_watch_misuse(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    """`status --watch` with machine output or a non-positive interval: one line, exit 2."""
    (tmp_path / "m.yaml").write_text(GOOD)
    proc = runner("status", "m.yaml", "--watch", *args, cwd=tmp_path)
    assert_one_error_line(proc, *needles)
    assert proc.returncode == 2 and proc.stdout == ""
    # `plan` shows, it does not watch.
    assert_argparse_error(runner("plan", "m.yaml", "--watch", cwd=tmp_path), "--watch")


# --------------------------------------------------------------------------------------------
# Safety defaults
# --------------------------------------------------------------------------------------------


def test_python_tag_does_not_run(tmp_path: Path) -> None:
    """`!!python/object/apply:os.system` in a matrix never runs (no PWNED file): exit 2."""
    (tmp_path / "m.yaml").write_text('!!python/object/apply:os.system ["touch PWNED"]\n')
    proc = runner("plan", "m.yaml", cwd=tmp_path)
    assert_one_error_line(proc, "m.yaml:1:")
    assert proc.returncode == 2
    assert not (tmp_path / "PWNED").exists()


SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNSAFE_NAMES = {
    "unsafe_load",
    "unsafe_load_all",
    "full_load",
    "full_load_all",
    "Loader",
    "UnsafeLoader",
    "FullLoader",
    "CLoader",
    "CUnsafeLoader",
    "CFullLoader",
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def test_runner_never_loads_yaml_unsafely() -> None:
    """Static check over runner/: every yaml.load/load_all passes a safe Loader (SafeLoader,
    or a class of runner's derived from it), and no unsafe loader or function is named."""
    files = sorted((ROOT / "runner").rglob("*.py"))
    assert files
    trees = {f: ast.parse(f.read_text(), filename=str(f)) for f in files}
    safe = set(SAFE_LOADERS)
    for tree in trees.values():  # runner's own loaders count as safe if derived from one
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and {_name(b) for b in node.bases} & safe:
                safe.add(node.name)
    problems = []
    for f, tree in trees.items():
        where = f.relative_to(ROOT)
        for node in ast.walk(tree):
            attr = isinstance(node, ast.Attribute) and node.attr in UNSAFE_NAMES
            if attr and _name(node.value) == "yaml":
                problems.append(f"{where}:{node.lineno}: yaml.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "yaml":
                bad = [a.name for a in node.names if a.name in UNSAFE_NAMES | {"load", "*"}]
                if bad:
                    problems.append(f"{where}:{node.lineno}: from yaml import {bad}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("load", "load_all")
                and _name(node.func.value) == "yaml"
            ):
                loader = [k.value for k in node.keywords if k.arg == "Loader"]
                loader += node.args[1:2]
                if not loader or _name(loader[0]) not in safe:
                    problems.append(
                        f"{where}:{node.lineno}: yaml.{node.func.attr} without a safe Loader"
                    )
    assert not problems, "\n".join(problems)
