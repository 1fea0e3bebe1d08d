"""The SLURM executor against a real single-node SLURM cluster (slurmctld, slurmd, slurmdbd).

The cluster is started once per run by ``tests/infra/slurm_cluster.sh`` (which also installs
it with apt when missing; ``slurm_cluster`` in tests/conftest.py) and stopped at the run's
end; each pytest worker submits to its own partition. Needs root and apt.
Run: ``.venv/bin/python -m pytest tests/test_slurm.py -m slurm``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from runner.executors.slurm import cluster as slurm_cluster_info
from runner.executors.slurm.backend import SlurmBackend, SlurmExecutorOptions, query_states
from tests.conftest import drain_partition, worker_partition
from tests.infra.slurm_payloads import (
    CountingWork,
    FakeRecipeCellJob,
    fail_with,
    sleep_and_report,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

ROOT = Path(__file__).resolve().parents[1]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


@pytest.fixture(scope="module")
def cluster(slurm_cluster: None) -> Iterator[None]:
    """The run's SLURM cluster (tests/conftest.py: started once, shared by the workers);
    after the module, whatever it left in this worker's partition is cancelled."""
    yield
    drain_partition(worker_partition())


def _options(**kw: Any) -> SlurmExecutorOptions:
    # The job imports the payloads from the repository; setup lines are the user's way too.
    base: dict[str, Any] = {
        "kind": "slurm",
        "cpus_per_task": 1,
        "gpus_per_task": 0,
        "time_min": 5,
        "setup": [f"export PYTHONPATH={ROOT}"],
    }
    if "gres" in kw:  # instead of gpus_per_task
        del base["gpus_per_task"]
    return SlurmExecutorOptions(**{**base, **kw})


@pytest.fixture
def backend(tmp_path: Path, cluster: None) -> Callable[..., SlurmBackend]:
    """A SlurmBackend with a fresh log folder (job ids restart after a wipe; logs append)."""
    return lambda **kw: SlurmBackend(_options(**kw), tmp_path / "logs")


def wait_states(ids: list[str], until: Callable[[str], bool], timeout_s: float) -> dict[str, str]:
    deadline = time.time() + timeout_s
    while True:
        states, _ = query_states(ids)
        if all(until(s) for s in states.values()) or time.time() > deadline:
            return states
        time.sleep(1)


def wait_running(ids: list[str]) -> None:
    """Until every job runs. Minutes, not seconds: the node is shared by every worker's
    tests, and a job waits for CPUs while another worker's 16 cells hold them."""
    states = wait_states(ids, lambda s: s == "RUNNING", 300)
    assert set(states.values()) == {"RUNNING"}, states


def _sacct_times(base: str) -> list[tuple[str, float, float]]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", base],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rows = []
    for line in out.split():
        jid, start, end = line.split("|")
        ts = [datetime.fromisoformat(x).timestamp() for x in (start, end)]
        rows.append((jid, ts[0], ts[1]))
    return sorted(rows, key=lambda r: r[1])


def test_four_cells_one_array_complete(backend: Callable[..., SlurmBackend]) -> None:
    b = backend(
        # A wrapper command as `python` (as for apptainer), srun arguments, memory, extras.
        python=f"env RUNNER_TEST_WRAPPED=yes {sys.executable}",
        srun_args=["--cpu-bind=none"],
        mem_gb=0.5,
        sbatch_extra={"comment": "runner-test"},
    )
    jobs = b.submit_callables([partial(sleep_and_report, 1, f"c{i}") for i in range(4)])
    assert len(b.arrays) == 1 and b.arrays[0][1] == 4
    assert {j.job_id for j in jobs} == {f"{b.arrays[0][0]}_{i}" for i in range(4)}
    script = Path(jobs[0].paths.submission_file).read_text()
    for line in ("#SBATCH --mem=512M", "#SBATCH --comment=runner-test", "--cpu-bind=none"):
        assert line in script
    results = [j.result() for j in jobs]
    assert [r["tag"] for r in results] == ["c0", "c1", "c2", "c3"]
    assert {r["wrapped"] for r in results} == {"yes"}
    states = wait_states([j.job_id for j in jobs], lambda s: s in ENDED, 30)
    assert set(states.values()) == {"COMPLETED"}


def test_throttle_one_never_runs_two_at_once(backend: Callable[..., SlurmBackend]) -> None:
    b = backend(array_parallelism=1)
    jobs = b.submit_callables([partial(sleep_and_report, 2, f"t{i}") for i in range(3)])
    assert "#SBATCH --array=0-2%1" in Path(jobs[0].paths.submission_file).read_text()
    results = sorted((j.result() for j in jobs), key=lambda r: r["start"])
    for before, after in itertools.pairwise(results):
        assert after["start"] >= before["end"], (before, after)
    wait_states([j.job_id for j in jobs], lambda s: s in ENDED, 30)
    rows = _sacct_times(b.arrays[0][0])  # SLURM's own record, to the second
    assert len(rows) == 3
    for before, after in itertools.pairwise(rows):
        assert after[1] >= before[2], rows


def test_exception_ends_failed_and_is_visible(backend: Callable[..., SlurmBackend]) -> None:
    (job,) = backend().submit_callables([partial(fail_with, "boom-42")])
    err = job.exception()
    assert err is not None and "boom-42" in str(err)
    assert "ValueError: boom-42" in (job.stderr() or "")
    states = wait_states([job.job_id], lambda s: s in ENDED, 30)
    assert states[job.job_id] == "FAILED"


def test_cancelled_job_ends_cancelled(backend: Callable[..., SlurmBackend]) -> None:
    b = backend()
    (job,) = b.submit_callables([partial(sleep_and_report, 300, "long")])
    wait_running([job.job_id])
    assert b.cancel([job.job_id, "999999"]) == [job.job_id]  # one scancel; unknown id refused
    states = wait_states([job.job_id], lambda s: s in ENDED, 60)
    assert states[job.job_id] == "CANCELLED"
    # submitit sees it too (through sacct), so waiting on the job does not hang.
    assert job.watcher.get_state(job.job_id, mode="force").startswith("CANCELLED")


@pytest.mark.clock
def test_timeout_requeues_and_resumes_from_checkpoint(
    backend: Callable[..., SlurmBackend], tmp_path: Path
) -> None:
    """Both a plain Checkpointable and a SlurmCellJob (ledger + MLflow) overrun 1 minute.

    SLURM checks limits on a 30 s tick and warns within [limit - 45 s, limit - 15 s], i.e.
    15-45 s into a run. The payloads work until they have been requeued once, then finish.
    """
    from mlflow import MlflowClient

    from runner import tracking
    from runner.ledger import Ledger

    b = backend(time_min=1, signal_delay_s=15)
    # The SlurmCellJob: a claimed attempt in a ledger and a run in a sqlite MLflow store.
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    exp = tracking.ensure_experiment(uri, "requeue", tmp_path / "mlartifacts")
    ledger = Ledger(tmp_path / "sweeps", "requeue")
    attempt = ledger.cell("c1").claim("slurm", 0)
    assert attempt is not None
    cell = FakeRecipeCellJob(
        matrix="requeue",
        recipe="fake",
        cell_id="c1",
        run_name="c1",
        values={},
        overrides=[],
        cells_dir=str(ledger.cells_dir),
        attempt=attempt.number,
        tracking_uri=uri,
        experiment_id=exp,
        executor="slurm",
        workdir=str(tmp_path),
    )
    cell.fake_epochs, cell.fake_epoch_s, cell.time_limit_min = 1000, 2.0, 1
    # As the backend sets it from its options (submit_callables takes payloads as they are):
    # the grace after the warning is half of it, so that the requeue comes before the limit.
    cell.signal_delay_s = 15
    progress = tmp_path / "progress.json"
    counting, cell_job = b.submit_callables([CountingWork(str(progress)), cell])

    seen: set[str] = set()  # every ledger state the cell passes through
    deadline = time.time() + 180
    while not (counting.done() and cell_job.done()) and time.time() < deadline:
        seen.add(ledger.cell("c1").state().state)
        time.sleep(0.5)
    result = counting.result()
    assert result["restarts"] == 1 and result["resumed_at"] >= 10, result
    outcome = cell_job.result()
    assert outcome["state"] == "done" and outcome["resumed_from_epoch"], outcome

    # The requeue is recorded where users look, and the cell never showed as failed.
    slurm_record = attempt.read("slurm") or {}
    assert slurm_record["restarts"] == 1 and slurm_record["starts"] == 2, slurm_record
    assert [e["kind"] for e in slurm_record["requeues"]] == ["timeout"]
    assert "failed" not in seen and "submitted" in seen, seen
    assert ledger.cell("c1").state().state == "done"

    # One MLflow run, continued from the checkpoint: every epoch logged exactly once.
    runs = MlflowClient(uri).search_runs([exp])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["runner.slurm_restarts"] == "1"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "epoch_done")
    assert sorted(m.step for m in history) == list(range(1, outcome["epochs"] + 1))
    assert outcome["epochs"] == outcome["resumed_from_epoch"] + 2


def test_gpu_gres_each_job_its_own_device(backend: Callable[..., SlurmBackend]) -> None:
    b = backend(gpus_per_task=1)
    jobs = b.submit_callables([partial(sleep_and_report, 4, f"g{i}") for i in range(2)])
    results = [j.result() for j in jobs]
    assert all(r["cuda"] in ("0", "1") for r in results), results
    overlap = results[0]["start"] < results[1]["end"] and results[1]["start"] < results[0]["end"]
    assert overlap, "both GPU jobs should run at once (2 CPUs, 2 GPUs)"
    assert {r["cuda"] for r in results} == {"0", "1"}, results


class _CountingSubprocess(types.SimpleNamespace):
    """Stands in for the module's ``subprocess``: counts commands, runs them for real."""

    def __init__(self) -> None:
        # Everything of the real module but `run` (an attribute would hide the method below).
        names = [k for k in dir(subprocess) if k[0] != "_" and k != "run"]
        super().__init__(**{k: getattr(subprocess, k) for k in names})
        self.commands: list[str] = []

    def run(self, cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        self.commands.append(cmd[0])
        return subprocess.run(cmd, *args, **kwargs)


def test_query_states_one_squeue_one_sacct(
    backend: Callable[..., SlurmBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = backend().submit_callables([partial(sleep_and_report, 0, "q")])
    failing = backend().submit_callables([partial(fail_with, "x")])
    throttled = backend(array_parallelism=1).submit_callables(
        [partial(sleep_and_report, 120, f"r{i}") for i in range(3)]
    )
    ids = [j.job_id for j in quick + failing + throttled]
    wait_states(ids[:2], lambda s: s in ENDED, 30)
    wait_running(ids[2:3])

    counter = _CountingSubprocess()
    monkeypatch.setattr(slurm_cluster_info, "subprocess", counter)
    states, warning = query_states(ids)
    monkeypatch.undo()
    # One squeue; accounting only for the ids squeue (-t all) no longer lists: none here
    # when the ended jobs are still within the controller's MinJobAge.
    assert counter.commands.count("squeue") == 1 and counter.commands.count("sacct") <= 1
    assert set(counter.commands) <= {"sacct", "squeue"}
    assert warning is None
    assert states == {
        ids[0]: "COMPLETED",
        ids[1]: "FAILED",
        ids[2]: "RUNNING",
        ids[3]: "PENDING",
        ids[4]: "PENDING",
    }
    for job in throttled:
        job.cancel(check=False)
    wait_states(ids[2:], lambda s: s in ENDED, 60)


def test_a_partition_the_matrix_names_wins_over_sbatch_partition(
    backend: Callable[..., SlurmBackend],
) -> None:
    """sbatch lets $SBATCH_PARTITION override a script's ``--partition`` line; a login that
    exports a default (as this suite does: the worker's own) must not send a matrix's cells
    elsewhere. It sent the preemption test's cell to the worker's partition, never
    preempted."""
    assert os.environ["SBATCH_PARTITION"].startswith("gw")
    (job,) = backend(partition="debug").submit_callables([partial(sleep_and_report, 1, "p")])
    assert wait_states([job.job_id], lambda s: s in ENDED, 300)[job.job_id] == "COMPLETED"
    # The controller's record (kept for MinJobAge after the end; accounting may lag it).
    show = ["scontrol", "show", "job", "-o", job.job_id]
    out = subprocess.run(show, capture_output=True, text=True, timeout=30, check=True).stdout
    assert re.findall(r"\bPartition=(\S+)", out) == ["debug"], out
    assert os.environ["SBATCH_PARTITION"].startswith("gw")  # the suite's default is back


def test_query_states_falls_back_without_accounting(
    backend: Callable[..., SlurmBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sacct can't reach the accounting daemon: states come from squeue alone, with a
    warning. The daemon is made unreachable for this test's clients only (their slurm.conf
    names a closed port), not stopped: the other workers' tests keep their accounting."""
    (job,) = backend().submit_callables([partial(sleep_and_report, 120, "n")])
    wait_running([job.job_id])
    conf = Path(os.environ["SLURM_CONF"])
    (tmp_path / "etc").mkdir()
    shutil.copy(conf.parent / "gres.conf", tmp_path / "etc")
    text = conf.read_text().replace("AccountingStoragePort=6819", "AccountingStoragePort=1")
    assert "AccountingStoragePort=1\n" in text
    (tmp_path / "etc" / "slurm.conf").write_text(text)
    with monkeypatch.context() as env:
        env.setenv("SLURM_CONF", str(tmp_path / "etc" / "slurm.conf"))
        started = time.time()
        states, warning = query_states([job.job_id, "999999"])
        assert time.time() - started < 20
    assert warning is not None and "accounting is unavailable" in warning
    assert states == {job.job_id: "RUNNING", "999999": "UNKNOWN"}
    job.cancel(check=False)
    states = wait_states([job.job_id], lambda s: s in ENDED, 60)
    assert states[job.job_id] == "CANCELLED"
    assert query_states([job.job_id])[1] is None


def test_matrix_larger_than_max_array_size_goes_out_in_chunks(
    backend: Callable[..., SlurmBackend],
) -> None:
    """Arrays are cut at the cluster's MaxArraySize (read from ``scontrol show config``) or
    at ``array_size`` when that is lower (sites cap a user's submitted jobs below it). The
    cut is tested through ``array_size``: lowering MaxArraySize itself means restarting the
    controller, which the other workers' tests are using."""
    assert backend().max_array_size == 1001  # the test cluster's MaxArraySize
    b = backend(array_parallelism=2, array_size=4)
    assert b.max_array_size == 4
    jobs = b.submit_callables([partial(sleep_and_report, 0, f"m{i}") for i in range(10)])
    bases = {j.job_id.split("_")[0] for j in jobs}
    assert len(bases) == 3 and [n for _, n in b.arrays] == [4, 4, 2]
    # Later arrays wait for the previous one: %2 holds for the whole matrix.
    scripts = [Path(jobs[i].paths.submission_file).read_text() for i in (0, 4, 8)]
    assert "--dependency" not in scripts[0]
    assert f"#SBATCH --dependency=afterany:{b.arrays[0][0]}" in scripts[1]
    assert f"#SBATCH --dependency=afterany:{b.arrays[1][0]}" in scripts[2]
    assert [j.result()["tag"] for j in jobs] == [f"m{i}" for i in range(10)]
    assert backend(array_size=5000).max_array_size == 1001


def _recipe_works() -> bool:
    try:
        import recipes.segmentation.train  # noqa: F401
    except Exception:
        return False
    return True


def test_end_to_end_matrix_through_slurm(cluster: None, tmp_path: Path) -> None:
    if not _recipe_works():
        pytest.skip("recipes.segmentation.train does not import yet")
    from mlflow import MlflowClient

    from runner.plan import make_plan
    from runner.sweep.submit import submit

    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(
        json.dumps(
            {
                "name": "slurm-e2e",
                "recipe": "segmentation",
                "base": [
                    "data=demo",
                    "training.max_epochs=1",
                    "model=basic_unet",
                    "model.size=tiny",
                    "training.num_threads=1",
                ],
                "axes": {"seed": [0, 1]},
                "executor": {
                    "kind": "slurm",
                    "cpus_per_task": 1,
                    "gpus_per_task": 0,
                    "time_min": 10,
                    "setup": [f"export PYTHONPATH={ROOT}"],
                },
                "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db"},
                "sweep_dir": str(tmp_path / "sweeps"),
            }
        )
    )
    plan = make_plan(matrix, workdir=tmp_path)
    outcome = submit(plan)  # returns once submitted: SLURM keeps the queue
    assert len(outcome.submitted) == 2
    ids = list(outcome.job_ids.values())
    assert len({j.split("_")[0] for j in ids}) == 1, ids  # one sbatch for the matrix
    deadline = time.time() + 240
    while time.time() < deadline:
        states = plan.states()
        if all(s.state in ("done", "failed", "diverged") for s in states.values()):
            break
        time.sleep(2)
    assert {s.state for s in states.values()} == {"done"}, states
    # The ledger says done before the process exits; SLURM follows a moment later.
    assert set(wait_states(ids, lambda s: s in ENDED, 30).values()) == {"COMPLETED"}
    runs = MlflowClient(plan.tracking_uri).search_runs([outcome.experiment_id])
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["runner.cell_id"] for r in runs} == set(states)
    assert all("val_dice" in r.data.metrics for r in runs)


def test_recipe_under_hydra_multirun_on_submitit_slurm(cluster: None, tmp_path: Path) -> None:
    """The recipe is also a plain Hydra app: ``-m hydra/launcher=submitit_slurm`` sweeps it
    through hydra-submitit-launcher on the real cluster, each job logging its own run."""
    if not _recipe_works():
        pytest.skip("recipes.segmentation.train does not import yet")
    from mlflow import MlflowClient

    from tests.e2e import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "demo")
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cmd = [
        sys.executable,
        "-m",
        "recipes.segmentation",
        "-m",
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.partition={worker_partition()}",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.mem_gb=2",
        f"hydra.launcher.setup=['export PYTHONPATH={ROOT}']",
        f"hydra.sweep.dir={tmp_path}/multirun",
        "model=unet,segresnet",
        "model.size=tiny",
        f"data.root={data}",
        "training.max_epochs=1",
        "training.batch_size=1",
        "training.patch_size=[16,16,16]",
        "training.num_threads=1",
        f"tracking.uri={uri}",
    ]
    out = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("segmentation").experiment_id])
    assert sorted(r.data.params["model.name"] for r in runs) == ["segresnet", "unet"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_name for r in runs} == {
        "model.size=tiny,model=segresnet,training.batch_size=1,training.max_epochs=1,"
        "training.patch_size=[16,16,16]",
        "model.size=tiny,model=unet,training.batch_size=1,training.max_epochs=1,"
        "training.patch_size=[16,16,16]",
    }


# --- the real recipe stopped mid-epoch by the time limit and by a preemption ----------------


def _real_cell(tmp_path: Path, name: str, epochs: int, epoch_s: float) -> tuple[Any, ...]:
    """A claimed ledger cell that trains the segmentation recipe for ``epochs`` epochs of
    about ``epoch_s`` seconds each on this machine now, an MLflow store, and the reference:
    the same config trained in this process without interruption.

    An epoch's length in steps is chosen from a short calibration run here: a test that
    needs an epoch to outlast what one attempt can train must not depend on how busy the
    machine is."""
    from mlflow import MlflowClient

    from recipes.components.data.demo_data import ensure_demo_dataset
    from recipes.contract import RunContext
    from runner import tracking
    from runner.executors.slurm.job import SlurmCellJob
    from runner.ledger import Ledger
    from runner.recipe import Recipe

    recipe = Recipe.load("segmentation")
    uri = f"sqlite:///{tmp_path}/mlruns.db"

    def settings(cases: int) -> list[str]:
        data = ensure_demo_dataset(tmp_path / f"demo{cases}", cases=cases, size=24)
        return [
            f"data.root={data}",
            "data.val_fraction=0.05",  # few validation volumes: the epochs are the point
            "training.patch_size=[16,16,16]",
            "training.samples_per_volume=1",
            "training.batch_size=1",  # one step per training volume
            f"training.max_epochs={epochs}",
            "training.val_interval=1",
            "training.num_threads=1",
            "model.dropout_prob=0.2",  # the global RNG matters at every step
        ]

    def train_here(overrides: list[str], experiment: str, ckpt: str) -> Any:
        exp_id = tracking.ensure_experiment(uri, experiment, tmp_path / "mlartifacts")
        run_id = MlflowClient(uri).create_run(exp_id).info.run_id
        ctx = RunContext(uri, run_id, tmp_path / ckpt)
        return run_id, recipe.train_fn()(recipe.compose(overrides), ctx)

    _, probe = train_here([*settings(20), "training.max_epochs=1"], "calibration", "probe")
    steps = max(40, round(epoch_s * probe.metrics["samples_per_s"]))
    overrides = settings(round(steps / 0.95) + 1)

    exp = tracking.ensure_experiment(uri, name, tmp_path / "mlartifacts")
    ledger = Ledger(tmp_path / "sweeps", name)
    attempt = ledger.cell("c1").claim("slurm", 0)
    assert attempt is not None
    cell = SlurmCellJob(
        matrix=name,
        recipe="segmentation",
        cell_id="c1",
        run_name="c1",
        values={},
        overrides=overrides,
        cells_dir=str(ledger.cells_dir),
        attempt=attempt.number,
        tracking_uri=uri,
        experiment_id=exp,
        executor="slurm",
        workdir=str(tmp_path),
    )

    def reference() -> str:
        run_id, result = train_here(overrides, "reference", "reference")
        assert result.status == "done"
        return run_id

    return cell, ledger, attempt, uri, exp, reference


def _assert_one_run_same_epochs(uri: str, exp: str, reference: str, epochs: int) -> Any:
    """The cell's single MLflow run finished with every epoch logged once, each equal to the
    uninterrupted reference (1e-6); returns the run."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([exp])
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_dice"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        want = sorted((m.step, m.value) for m in client.get_metric_history(reference, key))
        assert [s for s, _ in got] == list(range(1, epochs + 1)), (key, got)
        for (step, value), (_, expected) in zip(got, want, strict=True):
            assert value == pytest.approx(expected, abs=1e-6), (key, step)
    return run


def _resumed_at(uri: str, run_id: str) -> list[str]:
    """The points the cell's attempts resumed from: config_resumed_epochE[_batchB].yaml."""
    from mlflow import MlflowClient

    names = [f.path for f in MlflowClient(uri).list_artifacts(run_id)]
    return sorted(
        n.removeprefix("config_resumed_").removesuffix(".yaml")
        for n in names
        if n.startswith("config_resumed_")
    )


@pytest.mark.clock
def test_time_limit_stops_the_recipe_mid_epoch_and_resumes_from_that_step(
    backend: Callable[..., SlurmBackend], tmp_path: Path
) -> None:
    """The real recipe under a 2-minute limit: warned 15-45 s before it (SLURM's 30 s tick),
    it writes a step checkpoint, requeues and continues from that step; the cell needs more
    than one attempt and ends done in one MLflow run with its epoch logged once. Its one epoch
    (~150 s here) outlasts what one attempt can train (at most ~95 s of a 2-minute limit
    after start-up), so finishing at all takes a mid-epoch resume.

    That the resumed epoch equals an uninterrupted one is the preemption test's assertion
    below (the same path: SLURM's signal, a step checkpoint, a requeue, a mid-epoch resume,
    with 2 epochs of ~25 s): an uninterrupted reference of this 150 s epoch would double the
    CPU the test takes from the suite's two cores.

    Over 120 s, necessarily: SLURM's shortest limit is 1 minute and its limit checks run on a
    fixed 30 s tick, so a warning comes 15-45 s into a 1-minute job, too close to start-up
    to train between; 2 minutes is the shortest limit that leaves an attempt time to train,
    and two attempts plus the requeue are the test."""
    from mlflow import MlflowClient

    epochs = 1
    cell, ledger, attempt, uri, exp, _ = _real_cell(tmp_path, "midepoch", epochs, 150)
    b = backend(time_min=2, signal_delay_s=15, max_requeues=8)
    (job,) = b.submit([cell])
    outcome = job.result()
    assert outcome["state"] == "done", outcome
    record = attempt.read("slurm") or {}
    kinds = [e["kind"] for e in record["requeues"]]
    assert kinds and set(kinds) == {"timeout"}, record
    client = MlflowClient(uri)
    (run,) = client.search_runs([exp])
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_dice"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1], (key, steps)  # the epoch logged once, by the attempt that ended it
    assert any("_batch" in at for at in _resumed_at(uri, run.info.run_id)), record
    assert ledger.cell("c1").state().state == "done"


@pytest.mark.clock
def test_preempted_cell_requeues_and_resumes_mid_epoch(
    backend: Callable[..., SlurmBackend], tmp_path: Path
) -> None:
    """A cell in the preemptible partition holding the cluster's one ``token``; once its
    first epoch is logged, a job in the high-priority partition asks for that token: SLURM
    preempts the cell (SIGTERM, then REQUEUE after the partition's 15 s GraceTime), which
    writes a step checkpoint, restarts once the token is free, resumes mid-epoch and ends
    done in the same MLflow run."""
    epochs = 2
    cell, ledger, attempt, uri, exp, reference = _real_cell(tmp_path, "preempt", epochs, 25)
    b = backend(time_min=30, partition="preemptible", gres="token:1")
    (job,) = b.submit([cell])
    deadline = time.time() + 600
    while int((attempt.read("heartbeat") or {}).get("epoch", 0)) < 1:
        assert time.time() < deadline and not job.done(), attempt.read("status")
        time.sleep(1)
    time.sleep(5)  # well into epoch 2 (~25 s)
    # The token for 5 s (its output nowhere: sbatch would write it to the cwd).
    sbatch = [
        "sbatch",
        "--parsable",
        "-p",
        "urgent",
        "--gres=token:1",
        "-t",
        "2",
        "-o",
        "/dev/null",
    ]
    urgent = subprocess.run(
        [*sbatch, "--wrap", "sleep 5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    ref = reference()
    outcome = job.result()
    assert outcome["state"] == "done", outcome
    record = attempt.read("slurm") or {}
    assert [e["kind"] for e in record["requeues"]] == ["preempted"], record
    assert record["restarts"] >= 1 and record["starts"] == 2, record
    run = _assert_one_run_same_epochs(uri, exp, ref, epochs)
    assert [at for at in _resumed_at(uri, run.info.run_id) if "_batch" in at], record
    assert wait_states([urgent], lambda s: s in ENDED, 60)[urgent] == "COMPLETED"
    assert ledger.cell("c1").state().state == "done"
