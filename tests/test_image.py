"""The trainer image (containers/Dockerfile), built for real by ``make image`` and run.

``make image`` builds it on the suite's Docker Engine (the ``engine`` fixture of
tests/test_docker.py) from the local Debian base (``runner-base:bookworm``, no registry),
with the host's wheelhouse (``$PIP_FIND_LINKS``: the CPU torch wheel) and PyPI for the rest.
Then: the image runs as a non-root user, holds the project and its deps with torch at the
constraints.txt pin, and a cell runs to ``done`` through the docker executor with nothing of
the host but the data and the sweep's own directories mounted.

The first build takes minutes (apt, pip: torch, MONAI, MLflow); later ones reuse Docker's
layer cache. The image stays on the engine (tag ``runner-trainer:test``) for that cache; an
older image of that tag is removed once a new one replaces it.
Run: ``.venv/bin/python -m pytest tests/test_image.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import make_tiny_dataset, matrix_text
from tests.test_docker import BASE_IMAGE, ROOT, engine

pytestmark = [pytest.mark.slow, pytest.mark.docker]

__all__ = ["engine"]  # the suite's Docker Engine fixture, shared with tests/test_docker.py

TAG = "runner-trainer:test"
# The package's CLI (another one first on PATH may lack BuildKit: notes, real docker).
DOCKER_CLI = "/usr/bin/docker"
IMPORTS = "runner, recipes, torch, monai, mlflow, submitit, optuna"


def _torch_pin() -> str:
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(r"^torch==(\S+)", text, re.MULTILINE)
    assert match, "constraints.txt pins no torch"
    return match.group(1)


def _image_id(client: Any, tag: str) -> str | None:
    import docker.errors

    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        return None


def _build(client: Any) -> tuple[str, float]:
    """``make image`` for TAG from the local base: (its output, seconds)."""
    old = _image_id(client, TAG)
    cmd = ["make", "--no-print-directory", "image"]
    cmd += [f"IMAGE={TAG}", f"BASE_IMAGE={BASE_IMAGE}", f"DOCKER={DOCKER_CLI}"]
    t0 = time.time()
    out = subprocess.run(
        cmd,
        cwd=ROOT,
        # BuildKit: the build stages are cache, not dangling images. DOCKER_HOST: the engine's.
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,  # a cold build downloads MONAI, MLflow, ... from PyPI
        check=False,
    )
    took = time.time() - t0
    assert out.returncode == 0, f"make image failed:\n{out.stdout[-6000:]}"
    new = _image_id(client, TAG)
    assert new is not None, out.stdout[-3000:]
    if old is not None and old != new:  # the tag moved: the image it named is dangling now
        with contextlib.suppress(Exception):
            client.images.remove(old)
    return out.stdout, took


@pytest.fixture(scope="module")
def trainer_image(engine: Any) -> str:
    log, took = _build(engine)
    print(f"make image: {took:.1f}s", file=sys.stderr)
    # The wheelhouse was used: the host's torch wheel went into the build context.
    wheels = [p.name for p in (ROOT / "containers" / "wheels").glob("*.whl")]
    if any(w.startswith("torch-") for w in wheels):
        assert "wheelhouse: " in log
    return TAG


def _run(client: Any, *cmd: str, **kwargs: Any) -> str:
    out = client.containers.run(TAG, list(cmd), remove=True, network_mode="none", **kwargs)
    return bytes(out).decode().strip()


def test_the_image_runs_as_a_non_root_user(engine: Any, trainer_image: str) -> None:
    image = engine.images.get(trainer_image)
    assert image.attrs["Config"]["User"] == "runner"
    assert _run(engine, "id", "-u") == "1000"
    assert _run(engine, "id", "-un") == "runner"
    # What the image needs at run time is readable by that user; its home is writable.
    assert _run(engine, "sh", "-c", "touch $HOME/x && echo ok") == "ok"


def test_the_image_holds_the_project_and_the_pinned_torch(engine: Any, trainer_image: str) -> None:
    script = (
        f"import {IMPORTS}, sys; "
        "print(torch.__version__); print(runner.__file__); print(recipes.__file__); "
        "print(sys.prefix)"
    )
    version, runner_file, recipes_file, prefix = _run(engine, "python", "-c", script).split("\n")
    # The pin (a local build label such as +cpu is the same release).
    assert version.split("+")[0] == _torch_pin(), version
    assert prefix == "/opt/venv"
    # Installed, not editable: the packages live in the venv's site-packages.
    assert runner_file.startswith("/opt/venv/lib/") and "site-packages" in runner_file
    assert recipes_file.startswith("/opt/venv/lib/") and "site-packages" in recipes_file
    # The recipes' YAML configs came along (package data).
    yamls = _run(engine, "sh", "-c", f"find {Path(recipes_file).parent} -name '*.yaml' | wc -l")
    assert int(yamls) > 0
    # Lean: no wheels, no pip cache, no build CAs, no sources left in the image.
    leftovers = _run(
        engine,
        "sh",
        "-c",
        "find / -xdev \\( -name '*.whl' -o -path '*/.cache/pip' \\) -print 2>/dev/null; "
        "find /usr/local/share/ca-certificates /tmp -mindepth 1; "
        "ls -d /opt/runner 2>/dev/null; true",
    )
    assert leftovers == "", leftovers


def test_a_cell_runs_in_the_image_alone(
    engine: Any, trainer_image: str, project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The image is self-sufficient: no checkout, no host venv or interpreter mounted (only
    the data; the executor adds the sweep dir, the working directory and the store)."""
    from mlflow import MlflowClient

    from runner.cli import main
    from runner.plan import make_plan

    data = make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "m.yaml"
    # python: the image's default ("python", /opt/venv/bin on its PATH); no env passed in.
    executor = (
        f"{{kind: docker, image: '{trainer_image}', gpus: [], cpu_slots: 1, "
        f"mounts: [{{source: '{data.parent}'}}]}}"
    )
    path.write_text(matrix_text("image_cell", data, "  model: [unet]", executor, uri))
    t0 = time.time()
    assert main(["sweep", str(path), "--wait"]) == 0
    print(f"a cell in the trainer image: {time.time() - t0:.1f}s", file=sys.stderr)

    plan = make_plan(path)
    (state,) = plan.states().values()
    assert state.state == "done", state
    (cell,) = plan.cells
    attempt = plan.ledger.cell(cell.id).attempt(1)
    info = attempt.read("docker")
    assert info["image"] == trainer_image and info["image_id"] == _image_id(engine, TAG)
    mlflow = MlflowClient(tracking_uri=uri)
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("image_cell").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["runner.docker_image"] == trainer_image
    assert len(mlflow.get_metric_history(run.info.run_id, "val_dice")) == 2  # max_epochs=2
    # Ended containers are removed.
    assert engine.containers.list(all=True, filters={"label": "runner.backend=docker"}) == []
