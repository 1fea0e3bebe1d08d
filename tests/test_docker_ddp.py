"""DDP cells in containers (``executor: {kind: docker, gpus_per_cell: 2}``).

* The launcher (:mod:`runner.executors.docker.ranks`) with real processes: each rank gets
  its submitit task variables and its own log, signals reach every rank, a failed rank's
  peers are killed after the grace period, the exit code is rank 0's.
* Through the runner on the suite's Docker Engine (tests/test_docker.py's fixture and its
  base image with the host venv mounted): a 2-process CPU (gloo) cell ends done in one MLflow
  run; `runner cancel` of a running one ends it cancelled and `runner resume` continues it
  into the same run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from runner.plan import make_plan
from tests.e2e import make_tiny_dataset, matrix_text, wait_for
from tests.test_docker import _executor, _ours, _sweep_until_an_epoch, engine

__all__ = ["engine"]  # the suite's Docker Engine fixture, shared with tests/test_docker.py

ROOT = Path(__file__).resolve().parents[1]

#: One rank of the launcher's tests: records its task variables, then behaves as told by
#: RANK_<k> (``sleep``: wait for a signal and record it; ``exit:<code>``; ``stubborn``:
#: ignore SIGINT/SIGTERM).
RANK = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    k = os.environ["SUBMITIT_LOCAL_GLOBALID"]
    keys = ["SUBMITIT_LOCAL_JOB_ID", "SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_LOCALID",
            "SUBMITIT_LOCAL_NODEID", "SUBMITIT_LOCAL_JOB_NUM_NODES", "MASTER_PORT"]
    def got(signum, frame):
        (out / f"signal.{k}").write_text(signal.Signals(signum).name)
        sys.exit(100 + int(k))
    how = os.environ[f"RANK_{k}"]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN if how == "stubborn" else got)
    print(f"rank {k} says hello", flush=True)
    (out / f"env.{k}").write_text(json.dumps({n: os.environ.get(n) for n in keys}))
    if how.startswith("exit:"):
        sys.exit(int(how[5:]))
    while True:
        time.sleep(0.05)
    """
)


@contextmanager
def _launch(
    tmp_path: Path, ranks: dict[int, str], grace_s: float = 60.0
) -> Iterator[subprocess.Popen[str]]:
    """The launcher in its own process (and process group), as a container's command, with
    RANK as each rank; whatever of it is left when the block ends is killed."""
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys; from pathlib import Path; from runner.executors.docker.ranks import launch; "
        f"sys.exit(launch(Path({str(tmp_path)!r}), {len(ranks)}, "
        f"[sys.executable, '-c', {RANK!r}, {str(out)!r}], {grace_s}))"
    )
    env = {**os.environ, "SUBMITIT_LOCAL_JOB_ID": "c0ffee"}
    env.update({f"RANK_{k}": how for k, how in ranks.items()})
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a failed test leaves no rank behind
        proc.wait()


def _started(tmp_path: Path, n: int) -> bool:
    return all((tmp_path / "out" / f"env.{k}").exists() for k in range(n))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_launcher_gives_each_rank_its_task_and_every_rank_the_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with _launch(tmp_path, {0: "sleep", 1: "sleep"}) as proc:
        wait_for(lambda: _started(tmp_path, 2), 60, "both ranks to start")
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 100  # rank 0's code, not rank 1's (101)
    for k in range(2):
        assert (tmp_path / "out" / f"signal.{k}").read_text() == sig.name
        env = json.loads((tmp_path / "out" / f"env.{k}").read_text())
        assert env["SUBMITIT_LOCAL_JOB_ID"] == "c0ffee"  # the container's id, not a pid
        assert (env["SUBMITIT_LOCAL_LOCALID"], env["SUBMITIT_LOCAL_NTASKS"]) == (str(k), "2")
        assert (env["SUBMITIT_LOCAL_NODEID"], env["SUBMITIT_LOCAL_JOB_NUM_NODES"]) == ("0", "1")
    ports = {json.loads((tmp_path / "out" / f"env.{k}").read_text())["MASTER_PORT"] for k in (0, 1)}
    assert len(ports) == 1 and ports.pop().isdigit()  # one group, one store
    # Rank 0 writes where the container's output goes (here: the launcher's), rank 1 where
    # submitit's Job looks for task 1's log.
    assert "rank 1 says hello" in (tmp_path / "c0ffee_1_log.out").read_text()
    assert not (tmp_path / "c0ffee_0_log.out").exists()


@pytest.mark.parametrize(
    ("ranks", "code"),
    [
        ({0: "stubborn", 1: "exit:3"}, 128 + signal.SIGKILL),  # rank 0 hangs: killed
        ({0: "exit:0", 1: "stubborn"}, 0),  # rank 0 is done; a hanging peer changes nothing
    ],
    ids=["peer-failed", "rank0-done"],
)
def test_a_rank_that_ends_leaves_the_others_a_grace_then_kills_them(
    tmp_path: Path, ranks: dict[int, str], code: int
) -> None:
    with _launch(tmp_path, ranks, grace_s=1.0) as proc:
        assert proc.wait(timeout=120) == code
        err = proc.stderr.read() if proc.stderr else ""
    assert "the other ranks have 1 s to end" in err and "killing rank(s)" in err, err
    assert _started(tmp_path, 2)  # both ran; the stubborn one was killed, not skipped


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _ddp_matrix(name: str, project: Path, data: Path, extra_base: list[str] | None = None) -> Path:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / f"{name}.yaml"
    executor = _executor(data, slots=1, extra="gpus_per_cell: 2")
    path.write_text(matrix_text(name, data, "  model: [unet]", executor, uri, extra_base))
    return path


@pytest.mark.slow
@pytest.mark.docker
def test_a_two_process_cell_in_a_container_is_one_run(
    engine: Any, project: Path, tiny_data: Path
) -> None:
    from mlflow import MlflowClient

    from runner.cli import main

    path = _ddp_matrix("docker_ddp", project, tiny_data)
    assert main(["sweep", str(path), "--wait"]) == 0
    plan = make_plan(path, project)
    (state,) = plan.states().values()
    assert state.state == "done", state
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("docker_ddp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["runner.executor"] == "docker"
    for key in ("train_loss", "val_dice", "lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2], (key, steps)  # once per step: rank 1 logs nothing
    (cell,) = plan.cells
    record = plan.ledger.cell(cell.id)
    ckpts = sorted(p.name for p in record.checkpoint_dir.iterdir())
    assert ckpts.count("last.pt") == 1 and all(not n.startswith("rank") for n in ckpts)
    docker, status = record.attempt(1).read("docker"), record.attempt(1).read("status")
    assert docker["ranks"] == 2 and docker["gpus"] == [] and docker["gpu"] is None
    assert status["job_id"] == docker["container_id"]
    # Its pid is the container's: the ledger must never check it against the host's pids.
    assert status["host"].endswith("(container)"), status
    # Two ranks, each with its log under the container's id; rank 1 trained too.
    logs = plan.ledger.logs_dir
    for k in (0, 1):
        assert (logs / f"{docker['container_id']}_{k}_log.err").exists(), list(logs.iterdir())
    assert _ours(engine) == []


@pytest.mark.slow
@pytest.mark.docker
def test_a_cancelled_two_process_container_resumes_into_its_run(
    engine: Any, project: Path, tiny_data: Path
) -> None:
    """`runner cancel` sends SIGINT to the container; the launcher hands it to both ranks,
    which stop together at their next step; rank 0 records the cell cancelled and its run
    KILLED; `runner resume` continues both ranks from rank 0's checkpoint into the same run,
    each epoch logged once."""
    from mlflow import MlflowClient

    from runner.cli import main

    # Long enough for the cancel to find it running after its first epoch: on idle cores 20
    # tiny epochs had all ended between the first one and the cancel.
    epochs = 60
    extra = [f"training.max_epochs={epochs}", "training.val_interval=10"]
    path = _ddp_matrix("docker_ddp_cancel", project, tiny_data, extra)
    with _sweep_until_an_epoch(path, project) as sweep:
        assert main(["cancel", str(path)]) == 0
    (cell,) = make_plan(path, project).cells
    record = make_plan(path, project).ledger.cell(cell.id)
    assert record.state().state == "cancelled", (record.state(), sweep.output[-3000:])
    status = record.attempt(1).read("status") or {}
    assert status.get("reason") == "cancelled" and status["job_id"] == sweep.container_id
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    run_id = record.run_id
    assert run_id and client.get_run(run_id).info.status == "KILLED"
    assert (record.checkpoint_dir / "last.pt").is_file()
    # Rank 1 ended quietly at the step both agreed to stop at (no interrupt of its own
    # leaving rank 0 waiting in a collective for it).
    logs = make_plan(path, project).ledger.logs_dir
    rank1 = (logs / f"{sweep.container_id}_1_log.err").read_text()
    assert "Traceback" not in rank1, rank1[-3000:]
    assert _ours(engine) == []

    assert main(["resume", str(path), "--wait"]) == 0
    state = record.state()
    assert state.state == "done", state
    resumed = (record.attempt(state.attempts).read("status") or {}).get("resumed_from_epoch")
    assert state.attempts == 2 and resumed is not None and resumed >= 1
    (run,) = client.search_runs([client.get_experiment_by_name("docker_ddp_cancel").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == epochs, steps
    assert _ours(engine) == []


@pytest.mark.slow
@pytest.mark.docker
def test_docker_stop_of_a_two_process_cell_records_it_lost(
    engine: Any, project: Path, tiny_data: Path
) -> None:
    """`docker stop` (SIGTERM, as a daemon stopping its containers): both ranks get it and
    stop together at their next step (neither is left waiting in a collective), rank 0
    records the cell lost (resumable) and fails its run, within Docker's stop timeout."""
    from mlflow import MlflowClient

    from runner.executors.docker.job import STOPPED

    path = _ddp_matrix("docker_ddp_stop", project, tiny_data, ["training.max_epochs=300"])
    with _sweep_until_an_epoch(path, project) as sweep:
        engine.containers.get(sweep.container_id).stop()
    (state,) = make_plan(path, project).states().values()
    assert state.state == "failed" and state.reason == STOPPED, (state, sweep.output[-3000:])
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    assert client.get_run(state.run_id).info.status == "FAILED"
    # Rank 1 ended quietly at the agreed step (no CellLost of its own, no broken group).
    logs = make_plan(path, project).ledger.logs_dir
    rank1 = (logs / f"{sweep.container_id}_1_log.err").read_text()
    assert "Traceback" not in rank1, rank1[-3000:]
    assert _ours(engine) == []


@pytest.mark.slow
@pytest.mark.docker
def test_a_ddp_cell_requests_its_group_of_gpus(engine: Any, tmp_path: Path) -> None:
    """Three GPUs, gpus_per_cell 2: one cell at a time gets GPUs 0 and 1 in one request (the
    third stays idle: preflight says so), with CUDA_VISIBLE_DEVICES for its two ranks.
    Asserted on created (not started) containers: no NVIDIA runtime here to start them."""
    import docker.errors

    from runner.executors.docker.backend import DockerBackend, DockerExecutorOptions
    from runner.ledger import CellRecord
    from tests.test_docker import BASE_IMAGE, _job

    options = DockerExecutorOptions(
        kind="docker", image=BASE_IMAGE, gpus=[0, 1, 2], gpus_per_cell=2, python="python"
    )
    backend = DockerBackend(options, tmp_path / "logs", start=False)
    assert backend.slots == 1
    try:
        try:
            (first,) = backend.submit([_job(tmp_path, 0, "ddp_gpus")])
        except docker.errors.APIError as exc:
            pytest.skip(f"this engine refuses to create a container with a GPU request: {exc}")
        attrs = engine.containers.get(first.job_id).attrs
        (req,) = attrs["HostConfig"]["DeviceRequests"]
        assert req["DeviceIDs"] == ["0", "1"] and req["Capabilities"] == [["gpu"]]
        assert attrs["Config"]["Labels"]["runner.gpu"] == "0,1"
        assert "CUDA_VISIBLE_DEVICES=0,1" in attrs["Config"]["Env"]
        folder = str((tmp_path / "logs").absolute())
        assert attrs["Config"]["Cmd"][-4:] == ["-m", "runner.executors.docker.ranks", folder, "2"]
        # No network: the ranks meet at the container's name, which points at the loopback.
        assert attrs["Config"]["Hostname"] == "cell-c0"
        assert attrs["HostConfig"]["ExtraHosts"] == ["cell-c0:127.0.0.1"]
        info = CellRecord(tmp_path / "cells", "c0").attempt(1).read("docker")
        assert (info["gpus"], info["gpu"], info["ranks"]) == ([0, 1], 0, 2)
        with pytest.raises(RuntimeError, match="in use"):  # never oversubscribed
            backend.submit([_job(tmp_path, 1, "ddp_gpus")])
        backend.release(first)
        (second,) = backend.submit([_job(tmp_path, 1, "ddp_gpus")])
        attrs = engine.containers.get(second.job_id).attrs
        assert attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0", "1"]
        backend.release(second)
        assert _ours(engine) == []
    finally:
        for c in _ours(engine):
            c.remove(force=True)


def test_too_few_gpus_for_gpus_per_cell_is_refused_before_anything_runs(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Listed GPUs: at plan time (exit 2, the key named); `gpus: all` on a machine with fewer:
    the backend's preflight, before any claim."""
    from runner.cli import main
    from runner.errors import RunnerError
    from runner.executors.docker.backend import DockerBackend, DockerExecutorOptions

    data = make_tiny_dataset(project / "demo")
    path = project / "few.yaml"
    executor = "{kind: docker, gpus: [0], gpus_per_cell: 2}"
    path.write_text(matrix_text("few", data, "  model: [unet]", executor, "sqlite:///x.db"))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "gpus_per_cell" in err and "gpus lists 1 GPU(s)" in err and "Traceback" not in err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # what `gpus: all` finds: one GPU
    options = DockerExecutorOptions(kind="docker", gpus_per_cell=2)
    backend = DockerBackend(options, tmp_path / "logs", start=False)
    with pytest.raises(RunnerError, match=r"gpus_per_cell=2, but the docker executor has 1 GPU"):
        backend.preflight()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: 2 CPU processes per cell
    backend = DockerBackend(options, tmp_path / "logs", start=False)
    backend.preflight()
    assert "each cell runs as 2 CPU processes" in capsys.readouterr().err
    assert backend.slots == 1 and backend.executor.ranks == 2
