"""The docker executor against a real Docker Engine on this machine.

The engine is started once for the session by ``tests/infra/docker_engine.sh`` (which also
installs docker.io with apt when missing and builds the local base image with debootstrap:
no registry is reachable here) and stopped at the end. Needs root and apt.

No full trainer image is built here (torch is too large for a test): the containers run the
local Debian base with this checkout, its virtualenv and its interpreter bind-mounted
read-only at their own paths, so the job runs the host venv's Python inside the container.
Run: ``.venv/bin/python -m pytest tests/test_docker.py -m docker``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import make_tiny_dataset, matrix_text, mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "infra" / "docker_engine.sh"
BASE_IMAGE = os.environ.get("RUNNER_DOCKER_BASE", "runner-base:bookworm")


def _engine(action: str) -> str:
    out = subprocess.run(
        [str(SCRIPT), action],
        capture_output=True,
        text=True,
        timeout=900,  # a first start installs docker.io and runs debootstrap
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"docker_engine.sh {action} failed:\n{out.stderr[-3000:]}")
    return out.stdout


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("starting a Docker Engine needs root")
    if not Path("/usr/sbin/dockerd").exists() and not shutil.which("apt-get"):
        pytest.skip("no dockerd and no apt-get to install docker.io")
    started = time.time()
    old = os.environ.get("DOCKER_HOST")
    for line in _engine("start").splitlines():  # "export DOCKER_HOST=unix://..."
        if line.startswith("export DOCKER_HOST="):
            os.environ["DOCKER_HOST"] = line.split("=", 1)[1]
    try:
        _engine("base-image")
        import docker

        client = docker.from_env()
        print(f"Docker Engine and base image ready in {time.time() - started:.1f}s")
        yield client
    finally:
        _engine("stop")
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _ours(client: Any) -> list[Any]:
    return client.containers.list(all=True, filters={"label": "runner.backend=docker"})


def _executor(data: Path, network: str = "auto", slots: int = 2) -> str:
    """Flow-style YAML for the executor block: the checkout, the venv, its interpreter and
    the data, all read-only at their own paths (PYTHONPATH goes in when set)."""
    mounts = dict.fromkeys([ROOT, Path(sys.prefix), Path(sys.base_prefix), data.parent])
    shown = ", ".join(f"{{source: '{m}'}}" for m in mounts)
    return (
        f"{{kind: docker, image: '{BASE_IMAGE}', gpus: [], cpu_slots: {slots}, "
        f"python: '{sys.executable}', network: {network}, env: [PYTHONPATH], "
        f"mounts: [{shown}]}}"
    )


def _check_done(path: Path, uri: str, client: Any) -> None:
    from mlflow import MlflowClient

    from runner.schedule import make_plan

    plan = make_plan(path)
    states = plan.states()
    assert {s.state for s in states.values()} == {"done"}, states
    image_id = client.images.get(BASE_IMAGE).id
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name(plan.matrix.spec.name).experiment_id]
    )
    assert sorted(r.info.run_name for r in runs) == sorted(c.run_name for c in plan.cells)
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["runner.executor"] == "docker"
        assert tags["runner.docker_image"] == BASE_IMAGE
        assert tags["runner.docker_image_id"] == image_id
        assert len(MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "val_dice"))
    for cell in plan.cells:
        record = plan.ledger.cell(cell.id)
        attempt = record.attempt(len(record.attempts()))
        job, info, status = attempt.read("job"), attempt.read("docker"), attempt.read("status")
        # The job id is the container's id, as seen by the submitter and inside the container.
        assert job["job_id"] == info["container_id"] == status["job_id"]
        assert info["image_id"] == image_id and info["gpu"] is None
        log = plan.ledger.logs_dir / f"{job['job_id']}_0_log.err"
        assert log.exists(), list(plan.ledger.logs_dir.iterdir())
    # Finished containers are removed; no anonymous volume is left either.
    assert _ours(client) == []
    assert client.volumes.list() == []


def test_three_cells_in_containers_sqlite_store(
    engine: Any, project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli import main

    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "m.yaml"
    axes = "  model: [unet]\n  seed: [0, 1, 2]"
    path.write_text(matrix_text("docker_sqlite", tiny_data, axes, _executor(tiny_data), uri))
    t0 = time.time()
    assert main(["sweep", str(path)]) == 0
    print(f"3 cells in containers: {time.time() - t0:.1f}s", file=sys.stderr)
    assert "3 done" in capsys.readouterr().out
    _check_done(path, uri, engine)


def test_against_an_mlflow_server_on_the_host(engine: Any, project: Path, tiny_data: Path) -> None:
    from runner.cli import main

    with mlflow_server(project) as uri:
        path = project / "m.yaml"
        axes = "  model: [unet]\n  seed: [0, 1]"
        # The server listens on 127.0.0.1: only the host's network reaches it.
        executor = _executor(tiny_data, network="host")
        path.write_text(matrix_text("docker_server", tiny_data, axes, executor, uri))
        assert main(["sweep", str(path)]) == 0
        _check_done(path, uri, engine)


@contextmanager
def _sweep_until_an_epoch(path: Path, project: Path) -> Iterator[tuple[Any, str, Any]]:
    """Run ``runner sweep`` in its own process (so that this one can kill or cancel the
    container meanwhile) until the only cell has trained an epoch, so that a resume has a
    checkpoint; yield (attempt 1, its container id, the sweep process)."""
    from runner.schedule import make_plan

    sweep = subprocess.Popen(
        [sys.executable, "-m", "runner", "sweep", str(path)],
        cwd=project,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        (cell,) = make_plan(path, project).cells
        attempt = make_plan(path, project).ledger.cell(cell.id).attempt(1)
        deadline = time.time() + 120
        while (attempt.read("heartbeat") or {}).get("epoch") is None:
            if sweep.poll() is not None:
                pytest.fail(f"the sweep ended too early:\n{sweep.communicate()[0]}")
            assert time.time() < deadline, "no epoch reported within 120 s"
            time.sleep(0.5)
        yield attempt, attempt.read("docker")["container_id"], sweep
        out, _ = sweep.communicate(timeout=120)
        print(out)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()


def _long_matrix(name: str, project: Path, tiny_data: Path) -> Path:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "m.yaml"
    text = matrix_text(name, tiny_data, "  model: [unet]", _executor(tiny_data), uri)
    path.write_text(text.replace("training.max_epochs=2", "training.max_epochs=6"))
    return path


def test_killed_container_is_lost_then_resumes(engine: Any, project: Path, tiny_data: Path) -> None:
    from runner.cli import main
    from runner.schedule import make_plan

    path = _long_matrix("docker_kill", project, tiny_data)
    with _sweep_until_an_epoch(path, project) as (_, container_id, _):
        engine.containers.get(container_id).kill()  # SIGKILL, exit 137
    (cell,) = make_plan(path, project).cells
    state = make_plan(path, project).states()[cell.id]
    assert state.state == "failed" and state.reason.startswith("lost"), state
    assert container_id in state.reason and "137" in state.reason
    assert _ours(engine) == []

    assert main(["resume", str(path)]) == 0  # `project` is the working directory
    final = make_plan(path, project).states()[cell.id]
    assert final.state == "done" and final.attempts == 2, final
    status = make_plan(path, project).ledger.cell(cell.id).attempt(2).read("status")
    assert status["resumed_from_epoch"], status
    assert _ours(engine) == []


def test_runner_cancel_interrupts_the_container(
    engine: Any, project: Path, tiny_data: Path
) -> None:
    """`runner cancel` sends SIGINT through docker-init: the cell records itself cancelled
    and closes its MLflow run as KILLED; the container is removed."""
    from mlflow import MlflowClient

    from runner.cli import main
    from runner.schedule import make_plan

    path = _long_matrix("docker_cancel", project, tiny_data)
    with _sweep_until_an_epoch(path, project) as (attempt, container_id, _):
        assert main(["cancel", str(path)]) == 0
    status = attempt.read("status") or {}
    assert status.get("state") == "cancelled" and status["job_id"] == container_id, status
    (state,) = make_plan(path, project).states().values()
    assert state.state == "cancelled", state
    uri = f"sqlite:///{project / 'mlruns.db'}"
    (run,) = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("docker_cancel").experiment_id]
    )
    assert run.info.status == "KILLED"
    assert _ours(engine) == []


def test_each_container_requests_the_gpu_it_was_given(engine: Any, tmp_path: Path) -> None:
    """Two GPUs, one cell each: the DeviceRequest names the scheduler's GPU; a third cell
    waits for a free one. Asserted on created (not started) containers: there is no NVIDIA
    runtime here to start them."""
    import docker.errors

    from runner.executors.docker import DockerBackend, DockerExecutorOptions
    from runner.job import CellJob

    options = DockerExecutorOptions(kind="docker", image=BASE_IMAGE, gpus=[0, 1], python="python")
    backend = DockerBackend(options, tmp_path / "logs", start=False)
    assert backend.slots == 2

    def job(i: int) -> CellJob:
        return CellJob(
            matrix="gpu",
            recipe="segmentation",
            cell_id=f"c{i}",
            run_name=f"c{i}",
            values={},
            overrides=[],
            cells_dir=str(tmp_path / "cells"),
            attempt=1,
            tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
            experiment_id="0",
            executor="docker",
            workdir=str(tmp_path),
        )

    try:
        try:
            first = backend.submit([job(0), job(1)])
        except docker.errors.APIError as exc:
            pytest.skip(f"this engine refuses to create a container with a GPU request: {exc}")
        requests = []
        for sj in first:
            attrs = engine.containers.get(sj.job_id).attrs
            (req,) = attrs["HostConfig"]["DeviceRequests"]
            assert req["Capabilities"] == [["gpu"]]
            requests.append(req["DeviceIDs"])
            assert attrs["Config"]["Labels"]["runner.gpu"] == req["DeviceIDs"][0]
            assert attrs["Config"]["Labels"]["runner.cell"] in ("c0", "c1")
            assert attrs["HostConfig"]["Privileged"] is False  # never privileged
        assert sorted(requests) == [["0"], ["1"]]
        with pytest.raises(RuntimeError, match="in use"):  # never oversubscribed
            backend.submit([job(2)])
        freed = engine.containers.get(first[0].job_id).labels["runner.gpu"]
        backend.release(first[0])  # removes the container, gives its GPU back
        (third,) = backend.submit([job(2)])
        attrs = engine.containers.get(third.job_id).attrs
        assert attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == [freed]
        backend.release(first[1])
        backend.release(third)
        assert _ours(engine) == []
    finally:
        for c in _ours(engine):
            c.remove(force=True)


def test_gpu_pool_spreads_then_shares() -> None:
    from runner.executors.docker_gpus import GpuPool

    pool = GpuPool([0, 1], cells_per_gpu=2)
    assert pool.size == 4
    taken = [pool.take() for _ in range(4)]
    assert taken == [0, 1, 0, 1]
    with pytest.raises(RuntimeError):
        pool.take()
    pool.give_back(1)
    assert pool.take() == 1
