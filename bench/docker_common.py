"""What the docker benchmarks share: a Docker Engine with the local base image.

:func:`docker_engine` uses the engine that ``DOCKER_HOST`` names when it has the base image;
otherwise it starts the test suite's own engine (``tests/infra/docker_engine.sh``: as root,
installs docker.io and builds the base image with debootstrap on first use) and stops it
afterwards. Containers run this checkout's virtualenv bind-mounted read-only
(:func:`venv_mounts`), as the tests do: no trainer image needs building.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "infra" / "docker_engine.sh"
BASE_IMAGE = os.environ.get("RUNNER_DOCKER_BASE", "runner-base:bookworm")


def engine_ready() -> str | None:
    """None when the engine answers and has the base image, else why not."""
    try:
        import docker

        docker.from_env().images.get(BASE_IMAGE)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _script(action: str) -> subprocess.CompletedProcess[str]:
    # A first start installs docker.io and runs debootstrap (a minute or two).
    return subprocess.run(
        [str(SCRIPT), action], capture_output=True, text=True, timeout=900, check=False
    )


@contextmanager
def docker_engine() -> Iterator[str | None]:
    """Yields None while an engine with the base image answers (``DOCKER_HOST`` set), or a
    sentence saying why there is none; stops the engine on exit if it started it."""
    if engine_ready() is None:
        yield None
        return
    if os.geteuid() != 0:
        yield f"no Docker engine with {BASE_IMAGE} answers, and starting one needs root"
        return
    old = os.environ.get("DOCKER_HOST")
    started = False
    try:
        out = _script("start")
        if out.returncode != 0:
            yield f"dockerd could not be started: {out.stderr.strip()[-500:]}"
            return
        started = "already running" not in out.stderr
        for line in out.stdout.splitlines():  # "export DOCKER_HOST=unix://..."
            if line.startswith("export DOCKER_HOST="):
                os.environ["DOCKER_HOST"] = line.split("=", 1)[1]
        image = _script("base-image")
        if image.returncode != 0:
            yield f"no base image {BASE_IMAGE}: {image.stderr.strip()[-500:]}"
            return
        yield engine_ready()
    finally:
        if started:
            _script("stop")
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old


def venv_mounts(*more: Path) -> list[str]:
    """Host paths a container needs to run this checkout with the host's virtualenv (and
    its interpreter) at their own paths, then ``more``; duplicates dropped."""
    return list(dict.fromkeys(str(p) for p in (ROOT, sys.prefix, sys.base_prefix, *more)))
