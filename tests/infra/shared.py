"""Infrastructure one pytest run shares across its workers: started once, stopped once.

``make test`` runs the suite on several pytest-xdist workers. The SLURM cluster and the
Docker Engine are machine-wide daemons, so a fixture scoped to a module or to one worker's
session must never start or stop them by itself: another worker may be using them (an
earlier attempt hung because one module stopped the cluster under another's jobs).

Here the first fixture that needs a service starts it (under a file lock, so two workers
never start it at once) and records that in the run's directory; every later request in
the run, from any worker, finds the record and reuses the service. Only the controller
process stops what the run started, in ``pytest_sessionfinish`` once every worker is done
(:func:`stop_all`). A service that was already running before the run (a developer's
``make slurm-up``) is used and left running.

The run's directory comes from the controller (``RUNNER_TEST_RUN_DIR``, set in
``pytest_configure`` before the workers are spawned, so they inherit it); a plain
``pytest`` without xdist is its own controller.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR_ENV = "RUNNER_TEST_RUN_DIR"
#: Each service: its control script (start / stop / status).
SCRIPTS = {
    "slurm": ROOT / "tests" / "infra" / "slurm_cluster.sh",
    "docker": ROOT / "tests" / "infra" / "docker_engine.sh",
}


def open_run_dir() -> Path:
    """Create the run's directory (controller only) and export it to the workers."""
    path = os.environ.get(RUN_DIR_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="runner-test-run-")
        os.environ[RUN_DIR_ENV] = path
    return Path(path)


def run_dir() -> Path:
    path = os.environ.get(RUN_DIR_ENV)
    return Path(path) if path else open_run_dir()


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    with open(run_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def control(name: str, action: str, timeout_s: float = 900, **env: str) -> str:
    """Run ``<script> action`` for service ``name``; its stdout, or RuntimeError with its
    stderr's tail (a first start installs packages: minutes)."""
    out = subprocess.run(
        [str(SCRIPTS[name]), action],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **env},
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{SCRIPTS[name].name} {action} failed:\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def _exports(output: str) -> dict[str, str]:
    """The ``export KEY=VALUE`` lines a start prints (SLURM_CONF, DOCKER_HOST)."""
    found = {}
    for line in output.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            found[key] = value
    return found


def running(name: str) -> bool:
    """Whether every daemon of ``name`` runs now (its script's ``status``)."""
    out = subprocess.run(
        [str(SCRIPTS[name]), "status"], capture_output=True, timeout=60, check=False
    )
    return out.returncode == 0


def ensure(name: str, on_first_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """Service ``name`` up for this run; returns its record (``env``: the variables to
    export, ``ours``: whether this run started it, and so stops it at its end).

    The first caller in the run starts it (and, when it was not running before, calls
    ``on_first_start`` with the record's variables exported: another run may be using a
    service that was already up); the others, on any worker, read the record."""
    record_path = run_dir() / f"{name}.json"
    with _locked(name):
        if record_path.exists():
            record = json.loads(record_path.read_text())
            os.environ.update(record["env"])
        else:
            was_running = running(name)
            record = {"env": _exports(control(name, "start")), "ours": not was_running}
            os.environ.update(record["env"])
            if on_first_start is not None and record["ours"]:
                on_first_start()
            record_path.write_text(json.dumps(record))
    return record


def stop_all() -> None:
    """Stop what this run started (the controller, after every worker ended)."""
    directory = os.environ.get(RUN_DIR_ENV)
    if not directory or not Path(directory).is_dir():
        return
    for name in SCRIPTS:
        record_path = Path(directory) / f"{name}.json"
        if not record_path.exists():
            continue
        record = json.loads(record_path.read_text())
        if record.get("ours"):
            if name == "slurm":
                # A job killed with its cluster comes back "running" on the next start.
                subprocess.run(["scancel", "--user", "root"], timeout=30, check=False)
            try:
                control(name, "stop")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"tests/infra/shared: stopping {name}: {exc}")
    shutil.rmtree(directory, ignore_errors=True)
