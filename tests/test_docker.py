"""The docker executor against a real Docker Engine on this machine.

The engine is started once per run by ``tests/infra/docker_engine.sh`` (which also installs
docker.io with apt when missing and builds the local base image with debootstrap: no
registry is reachable here; ``docker_engine`` in tests/conftest.py) and stopped at the
run's end. Needs root and apt.

No full trainer image is built here (torch is too large for a test): the containers run the
local Debian base with this checkout, its virtualenv and its interpreter bind-mounted
read-only at their own paths, so the job runs the host venv's Python inside the container.
Run: ``.venv/bin/python -m pytest tests/test_docker.py -m docker``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner.ledger import pid_alive
from runner.plan import make_plan
from tests.e2e import STARTS, make_tiny_dataset, matrix_text, mlflow_server, start_as, wait_for
from tests.infra import shared

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("RUNNER_DOCKER_BASE", "runner-base:bookworm")


def _engine(action: str) -> str:
    return shared.control("docker", action)


@pytest.fixture(scope="session")
def engine(docker_engine: Any) -> Any:
    """The run's Docker Engine (tests/conftest.py: started once for every worker); all the
    tests that use it run on one worker (``--dist loadgroup``: two of them restart it)."""
    return docker_engine


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _ours(client: Any) -> list[Any]:
    return client.containers.list(all=True, filters={"label": "runner.backend=docker"})


def _executor(data: Path, network: str = "auto", slots: int = 2, extra: str = "") -> str:
    """Flow-style YAML for the executor block: the checkout, the venv, its interpreter and
    the data, all read-only at their own paths (PYTHONPATH goes in when set); ``extra``:
    more options, e.g. ``engine_wait_s: 3``."""
    mounts = dict.fromkeys([ROOT, Path(sys.prefix), Path(sys.base_prefix), data.parent])
    shown = ", ".join(f"{{source: '{m}'}}" for m in mounts)
    return (
        f"{{kind: docker, image: '{BASE_IMAGE}', gpus: [], cpu_slots: {slots}, "
        f"python: '{sys.executable}', network: {network}, env: [PYTHONPATH], "
        f"mounts: [{shown}]{', ' + extra if extra else ''}}}"
    )


def _check_done(path: Path, uri: str, client: Any) -> None:
    from mlflow import MlflowClient

    from runner.plan import make_plan

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
        # The tag and the image's content digest (its id): the tag may move, the id not.
        assert tags["runner.docker_image"] == BASE_IMAGE
        assert tags["runner.docker_image_id"] == image_id and image_id.startswith("sha256:")
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
    # The default: the sweep hands the queue to a background scheduler and returns.
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "handed 3 cells to a background scheduler" in out, out
    pid = int(re.search(r"\(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    plan = make_plan(path)
    assert {s.state for s in plan.states().values()} != {"done"}  # returned before the end
    wait_for(lambda: not pid_alive(pid), 300, "the background scheduler to finish")
    print(f"3 cells in containers: {time.time() - t0:.1f}s", file=sys.stderr)
    _check_done(path, uri, engine)


def test_against_an_mlflow_server_on_the_host(engine: Any, project: Path, tiny_data: Path) -> None:
    from runner.cli import main

    with mlflow_server(project) as uri:
        path = project / "m.yaml"
        axes = "  model: [unet]\n  seed: [0, 1]"
        # The server listens on 127.0.0.1: only the host's network reaches it.
        executor = _executor(tiny_data, network="host")
        path.write_text(matrix_text("docker_server", tiny_data, axes, executor, uri))
        assert main(["sweep", str(path), "--wait"]) == 0
        _check_done(path, uri, engine)


@dataclass
class _Sweep:
    """A ``runner sweep --wait`` in its own process, once its cell has trained an epoch."""

    proc: subprocess.Popen[str]
    attempt: Any  # attempt 1 of the only cell
    container_id: str
    output: str = ""  # stdout and stderr, once it ended


@contextmanager
def _sweep_until_an_epoch(path: Path, project: Path, start: str = "terminal") -> Iterator[_Sweep]:
    """Run ``runner sweep`` in its own process (so that this one can kill or cancel the
    container, or restart the engine, meanwhile) until the only cell has trained an epoch,
    so that a resume has a checkpoint; the sweep's output is read when the block ends."""
    from runner.plan import make_plan

    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "sweep", str(path), "--wait"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=start_as(start),
    )
    try:
        (cell,) = make_plan(path, project).cells
        attempt = make_plan(path, project).ledger.cell(cell.id).attempt(1)
        deadline = time.time() + 120
        while (attempt.read("heartbeat") or {}).get("epoch") is None:
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended too early:\n{proc.communicate()[0]}")
            assert time.time() < deadline, "no epoch reported within 120 s"
            time.sleep(0.5)
        sweep = _Sweep(proc, attempt, attempt.read("docker")["container_id"])
        yield sweep
        sweep.output = proc.communicate(timeout=120)[0]
        print(sweep.output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _long_matrix(
    name: str, project: Path, tiny_data: Path, extra: str = "", epochs: int = 10
) -> Path:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "m.yaml"
    executor = _executor(tiny_data, extra=extra)
    text = matrix_text(name, tiny_data, "  model: [unet]", executor, uri)
    # Long enough that the cell is still training whenever the fault lands, even on an
    # idle machine where an epoch takes about a second.
    path.write_text(text.replace("training.max_epochs=2", f"training.max_epochs={epochs}"))
    return path


def test_killed_container_is_lost_then_resumes(engine: Any, project: Path, tiny_data: Path) -> None:
    from runner.cli import main
    from runner.plan import make_plan

    path = _long_matrix("docker_kill", project, tiny_data)
    with _sweep_until_an_epoch(path, project) as sweep:
        container_id = sweep.container_id
        engine.containers.get(container_id).kill()  # SIGKILL, exit 137
    (cell,) = make_plan(path, project).cells
    state = make_plan(path, project).states()[cell.id]
    assert state.state == "failed" and state.reason.startswith("lost"), state
    assert container_id in state.reason and "137" in state.reason
    assert _ours(engine) == []

    assert main(["resume", str(path), "--wait"]) == 0  # `project` is the working directory
    final = make_plan(path, project).states()[cell.id]
    assert final.state == "done" and final.attempts == 2, final
    status = make_plan(path, project).ledger.cell(cell.id).attempt(2).read("status")
    assert status["resumed_from_epoch"], status
    assert _ours(engine) == []


@contextmanager
def _engine_down() -> Iterator[None]:
    """The suite's dockerd stopped by its pid file, as an admin's ``systemctl stop docker``
    would (SIGTERM: it closes its API, then stops its containers with their stop signal;
    live-restore is off, Docker's default), and started again when the block ends."""
    _engine("stop")
    try:
        yield
    finally:
        _engine("start")


def _resumes_into_the_same_run(path: Path, project: Path, engine: Any, name: str) -> None:
    """`runner resume --wait` completes the cell from its checkpoint, in the same MLflow run."""
    from mlflow import MlflowClient

    from runner.cli import main
    from runner.plan import make_plan

    (cell,) = make_plan(path, project).cells
    record = make_plan(path, project).ledger.cell(cell.id)
    first = record.attempt(1).read("status") or {}
    assert main(["resume", str(path), "--wait"]) == 0
    final = make_plan(path, project).states()[cell.id]
    assert final.state == "done" and final.attempts == 2, final
    second = record.attempt(2).read("status") or {}
    assert second["resumed_from_epoch"] >= 1, second  # from the checkpoint, not from scratch
    assert first["run_id"] == second["run_id"] == record.run_id
    uri = f"sqlite:///{project / 'mlruns.db'}"
    mlflow = MlflowClient(tracking_uri=uri)
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name(name).experiment_id])
    assert run.info.run_id == record.run_id and run.info.status == "FINISHED"
    assert run.data.tags["runner.docker_image_id"] == engine.images.get(BASE_IMAGE).id
    assert _ours(engine) == []


def test_dockerd_restart_fails_the_cell_then_resumes(
    engine: Any, project: Path, tiny_data: Path
) -> None:
    """A dockerd restart mid-cell: the container dies with the daemon (SIGTERM: the cell
    records itself lost); the sweep waits for the engine instead of crashing, removes the
    container once the engine is back, and ends; resume continues the same MLflow run."""
    from mlflow import MlflowClient

    from runner.plan import make_plan

    path = _long_matrix("docker_restart", project, tiny_data)
    with _sweep_until_an_epoch(path, project) as sweep, _engine_down():
        time.sleep(3)  # down for a while: more than a poll or two of the sweep
        assert sweep.proc.poll() is None, "the sweep ended while the engine was down"
    assert sweep.proc.returncode == 1, sweep.output  # 1: a cell failed; no crash
    assert "Traceback" not in sweep.output
    assert "the Docker engine does not answer" in sweep.output
    assert "the Docker engine answers again" in sweep.output
    (state,) = make_plan(path, project).states().values()
    assert state.state == "failed" and state.reason.startswith("lost:"), state
    assert "Docker daemon" in state.reason
    uri = f"sqlite:///{project / 'mlruns.db'}"
    mlflow = MlflowClient(tracking_uri=uri)
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("docker_restart").experiment_id])
    assert run.info.status == "FAILED"  # closed by the cell itself, not left RUNNING
    assert _ours(engine) == []
    _resumes_into_the_same_run(path, project, engine, "docker_restart")


def test_engine_down_past_engine_wait_s_ends_the_sweep(
    engine: Any, project: Path, tiny_data: Path
) -> None:
    """The engine stays down: the sweep gives the cell up once engine and heartbeat have
    been silent for engine_wait_s and ends (no hang); the container it could not remove
    is removed by the matrix's next submission (a resume; here a created-only container,
    the resume itself is the test above)."""
    from runner.executors.docker.backend import DockerBackend, DockerExecutorOptions
    from runner.plan import make_plan

    path = _long_matrix("docker_down", project, tiny_data, extra="engine_wait_s: 3")
    with _sweep_until_an_epoch(path, project) as sweep, _engine_down():
        try:
            sweep.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the sweep still waits for the engine after 60 s")
    assert sweep.proc.returncode == 1 and "Traceback" not in sweep.output, sweep.output
    assert "the Docker engine does not answer" in sweep.output
    assert f"gave up on container {sweep.container_id}" in sweep.output
    (state,) = make_plan(path, project).states().values()
    assert state.state == "failed" and state.reason.startswith("lost:"), state
    # Left behind while the engine was down (exited now): the next sweep's to remove.
    left = _ours(engine)
    assert [c.short_id for c in left] == [sweep.container_id], left
    options = DockerExecutorOptions(kind="docker", image=BASE_IMAGE, gpus=[], python="python")
    backend = DockerBackend(options, project / "logs", start=False)
    (sj,) = backend.submit([_job(project, 9, "docker_down")])
    assert [c.short_id for c in _ours(engine)] == [sj.job_id]
    backend.release(sj)
    assert _ours(engine) == []


def test_release_removes_anonymous_volumes(engine: Any, tmp_path: Path) -> None:
    """An image that declares a VOLUME gives each container an anonymous volume; removing
    the ended container removes it too (nothing piles up over a sweep's cells)."""
    import io

    from runner.executors.docker.backend import DockerBackend, DockerExecutorOptions

    tag = "runner-test-volume:latest"
    dockerfile = f"FROM {BASE_IMAGE}\nVOLUME /scratch\n".encode()
    engine.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    before = {v.name for v in engine.volumes.list()}
    try:
        options = DockerExecutorOptions(kind="docker", image=tag, gpus=[], python="python")
        backend = DockerBackend(options, tmp_path / "logs", start=False)
        (sj,) = backend.submit([_job(tmp_path, 0, "volume")])
        new = {v.name for v in engine.volumes.list()} - before
        assert len(new) == 1, new  # the image's /scratch
        backend.release(sj)
        assert _ours(engine) == []
        assert {v.name for v in engine.volumes.list()} == before
    finally:
        for c in _ours(engine):
            c.remove(force=True, v=True)
        engine.images.remove(tag, force=True)


@pytest.mark.parametrize("start", STARTS)
def test_runner_cancel_interrupts_the_container(
    engine: Any, project: Path, tiny_data: Path, start: str
) -> None:
    """`runner cancel` sends SIGINT through docker-init: the cell records itself cancelled
    and closes its MLflow run as KILLED; the container is removed. The same when the sweep
    was started with SIGINT ignored."""
    from mlflow import MlflowClient

    from runner.cli import main
    from runner.plan import make_plan

    # Long enough that it is still training when the cancel lands, on an idle machine too.
    path = _long_matrix("docker_cancel", project, tiny_data, epochs=300)
    with _sweep_until_an_epoch(path, project, start) as sweep:
        attempt, container_id = sweep.attempt, sweep.container_id
        assert main(["cancel", str(path)]) == 0
        # Stopped by the time cancel returns (or already removed by the sweep).
        running = [c for c in engine.containers.list() if c.id.startswith(container_id)]
        assert running == []
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


def test_profile_runs_in_a_container_of_the_cells_image(
    engine: Any, project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runner profile` on a docker matrix trains the shape's steps where the cells would
    run: in a container of their image (issue 28); the container is removed after."""
    from runner.cli import main
    from runner.report.estimate import PROFILED

    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "p.yaml"
    axes = "  seed: [0, 1]"
    path.write_text(matrix_text("docker_profile", tiny_data, axes, _executor(tiny_data), uri))
    assert main(["profile", str(path), "--steps", "3"]) == 0
    assert "2 cells, 1 distinct shapes, 3 steps each on executor docker" in capsys.readouterr().out
    plan = make_plan(path)
    [shape] = json.loads((plan.ledger.root / PROFILED).read_text())["shapes"].values()
    assert shape["status"] == "ok" and shape["executor"] == "docker", shape
    assert shape["host"].endswith("(container)") and shape["steps"] == 3
    assert shape["step_s"] > 0 and len(shape["cells"]) == 2
    assert {s.state for s in plan.states().values()} == {"pending"}  # no cell trained
    # (only this matrix's: another run's tests may share the engine)
    assert [c for c in _ours(engine) if c.labels.get("runner.matrix") == "docker_profile"] == []


def test_each_container_requests_the_gpu_it_was_given(engine: Any, tmp_path: Path) -> None:
    """Two GPUs, one cell each: the DeviceRequest names the scheduler's GPU; a third cell
    waits for a free one. Asserted on created (not started) containers: there is no NVIDIA
    runtime here to start them."""
    import docker.errors

    from runner.executors.docker.backend import DockerBackend, DockerExecutorOptions
    from runner.executors.docker.job import DockerCellJob

    options = DockerExecutorOptions(kind="docker", image=BASE_IMAGE, gpus=[0, 1], python="python")
    backend = DockerBackend(options, tmp_path / "logs", start=False)
    assert backend.slots == 2

    def job(i: int) -> DockerCellJob:
        return _job(tmp_path, i, "gpu")

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


def _job(tmp_path: Path, i: int, matrix: str) -> Any:
    from runner.executors.docker.job import DockerCellJob

    return DockerCellJob(
        matrix=matrix,
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


def test_gpu_pool_spreads_then_shares() -> None:
    from runner.executors.resources import GpuPool

    pool = GpuPool([0, 1], cells_per_gpu=2)
    assert pool.size == 4
    taken = [pool.take() for _ in range(4)]
    assert taken == [0, 1, 0, 1]
    with pytest.raises(RuntimeError):
        pool.take()
    pool.give_back(1)
    assert pool.take() == 1


def _no_gpu_reason(client: Any) -> str | None:
    """Why a real GPU run in a container can't happen here, or None when it can."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    runtimes = client.info().get("Runtimes") or {}
    if "nvidia" not in runtimes and not shutil.which("nvidia-container-cli"):
        return f"the Docker engine has no NVIDIA runtime (runtimes: {sorted(runtimes)})"
    return None


def test_a_cell_trains_on_a_real_gpu_in_a_container(
    engine: Any, project: Path, tiny_data: Path
) -> None:
    """Where a GPU and the NVIDIA container runtime exist: the cell sees exactly the GPU the
    scheduler gave it and trains on it (the run's `device` tag names it)."""
    from mlflow import MlflowClient

    from runner.cli import main

    reason = _no_gpu_reason(engine)
    if reason:
        pytest.skip(reason)
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "gpu.yaml"
    executor = _executor(tiny_data, slots=1).replace("gpus: []", "gpus: [0]")
    path.write_text(matrix_text("docker_gpu", tiny_data, "  model: [unet]", executor, uri))
    assert main(["sweep", str(path), "--wait"]) == 0
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("docker_gpu").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["device"].startswith("cuda:0 "), run.data.tags


def test_asha_search_in_containers(engine: Any, project: Path, tiny_data: Path) -> None:
    """A TPE search with ASHA through the docker executor: the trials after the first two
    are asked as the two slots free up; each container reports to the study's journal in
    the sweep directory (mounted), so a rung weighs the other containers' values; trailing
    cells end ``pruned`` (ledger and MLflow run), the others ``done``."""
    from mlflow import MlflowClient

    from runner.cli import main
    from runner.search import study as journal

    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "asha.yaml"
    tiny_net = ["model=meshnet", "model.width=4", "model.dilations=[1,2,1]"]
    text = matrix_text("docker_asha", tiny_data, "  seed: [0]", _executor(tiny_data), uri, tiny_net)
    # Learning rates that learn and ones that don't (those tie on a plateau at the rung).
    text += (
        "search:\n  method: tpe\n  trials: 4\n  startup: 2\n  seed: 0\n"
        "  space: {optimizer.lr: 'loguniform(1.0e-7, 1.0e-1)'}\n"
        "pruner: {kind: asha, min_epochs: 1, max_epochs: 2, reduction_factor: 2}\n"
    )
    path.write_text(text)
    assert len(make_plan(path).cells) == 2  # the startup trials; TPE asks the others
    assert main(["sweep", str(path), "--wait"]) == 0
    plan = make_plan(path)
    states = plan.states()
    assert len(plan.cells) == 4
    by_state = {s: [c for c in plan.cells if states[c.id].state == s] for s in ("pruned", "done")}
    assert len(by_state["pruned"]) + len(by_state["done"]) == 4, states
    assert by_state["pruned"] and by_state["done"]
    assert main(["sync", str(path)]) == 0
    client = MlflowClient(tracking_uri=uri)
    for cell in plan.cells:
        run = client.get_run(states[cell.id].run_id)
        assert run.data.tags["runner.executor"] == "docker"
        assert run.data.tags["runner.state"] == states[cell.id].state
    for cell in by_state["pruned"]:
        run = client.get_run(states[cell.id].run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["runner.reason"].startswith("asha: rung 0 (epoch 1)")
    [st] = plan.search.studies
    trials = {t.number: t for t in journal.trials(plan.search.journal, st.name)}
    assert {t.state.name for t in trials.values()} == {"COMPLETE", "PRUNED"}
    # The asked trials started once a cell had ended: their rung saw its value too.
    asked = [json.loads(p.read_text()) for p in sorted((st.dir / "slots").iterdir())]
    assert [a["index"] for a in asked] == [2, 3]
    assert all(trials[a["number"]].system_attrs["asha:b0:r0:seen"] >= 2 for a in asked)
    assert _ours(engine) == []
