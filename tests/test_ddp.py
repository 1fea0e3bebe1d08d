"""DDP cells (``executor.gpus_per_cell: 2``), for real: two submitit tasks on the CPU with
gloo, through the runner, into one MLflow run; and the sharded sampler they train from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.plan import make_plan
from tests.e2e import background_runner, make_tiny_dataset, matrix_text, wait_for
from tests.test_slurm import cluster  # noqa: F401 - the SLURM test cluster, started once

#: |Dice(2 processes × batch 1) − Dice(1 process × batch 2)|. The two runs see the same
#: global batches (same permutation, rank-strided) with the same patches and augmentation
#: ((seed, epoch, case) seeding), and DDP averages the gradients of per-sample-mean losses,
#: so they differ by float summation order (gloo's all-reduce vs one batched backward)
#: and, where a norm layer pools over the batch, by its statistics; after two tiny epochs
#: that moves the validation Dice by a few thousandths (0.0009 measured here).
DICE_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def test_the_sampler_shards_one_permutation_and_skips_per_rank() -> None:
    from recipes.components.data.samplers import ResumableSampler
    from recipes.components.data.seeding import EpochSampler

    class Source:
        seed, epoch = 3, 2

        def __len__(self) -> int:
            return 7

    whole = list(EpochSampler(Source()))  # type: ignore[arg-type]
    shards = []
    for rank in range(2):
        sampler = ResumableSampler(Source())  # type: ignore[arg-type]
        sampler.rank, sampler.world = rank, 2
        shards.append(list(sampler))
        assert len(sampler) == 4
        sampler.skip = 3  # three batches of one done before a step checkpoint
        assert list(sampler) == shards[rank][3:] and len(sampler) == 1
    # Step k of both ranks together is indices 2k, 2k+1 of the one permutation, padded
    # with its own start: every rank has as many batches.
    padded = [*whole, whole[0]]
    assert [i for pair in zip(*shards, strict=True) for i in pair] == padded


def _sweep(project: Path, data: Path, name: str, executor: str, batch: int) -> tuple:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / f"{name}.yaml"
    path.write_text(
        matrix_text(name, data, "  model: [unet]", executor, uri, [f"training.batch_size={batch}"])
    )
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path)
    return plan, uri


@pytest.mark.slow
def test_a_two_process_cell_is_one_run_with_one_checkpoint(
    project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, uri = _sweep(project, tiny_data, "ddp2", "{kind: local, gpus_per_cell: 2}", 1)
    (state,) = plan.states().values()
    assert state.state == "done", state
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp2").experiment_id])
    assert len(runs) == 1  # rank 1 never creates one
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_dice", "lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2], (key, steps)  # once per step: rank 1 logs nothing
    (cell,) = plan.cells
    ckpts = sorted(p.name for p in plan.ledger.cell(cell.id).checkpoint_dir.iterdir())
    assert ckpts.count("last.pt") == 1 and all(not n.startswith("rank") for n in ckpts)
    # Both ranks trained: two task logs, the second with no ledger write of its own.
    status = plan.ledger.cell(cell.id).attempt(1).read("status")
    assert status["state"] == "done"

    # The same global batch in one process: the same Dice, within DICE_TOLERANCE.
    single, _ = _sweep(project, tiny_data, "ddp1", "{kind: local}", 2)
    (one,) = single.states().values()
    assert one.state == "done"
    gap = abs(float(one.best_val_dice) - float(state.best_val_dice))
    print(
        f"best val Dice: 2 processes {state.best_val_dice:.4f}, 1 process "
        f"{one.best_val_dice:.4f}, gap {gap:.4f}"
    )
    assert gap <= DICE_TOLERANCE


@pytest.mark.slow
def test_system_metrics_on_logs_system_series_into_the_run(tmp_path: Path) -> None:
    """``training.system_metrics=on`` on the CPU: MLflow's own monitor samples into the run
    ``auto`` leaves a CPU run without them."""
    from hydra import compose, initialize_config_dir

    from recipes.components.data.demo_data import ensure_demo_dataset
    from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
    from recipes.segmentation.train import train

    data = ensure_demo_dataset(tmp_path / "demo", cases=4, size=24)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(mode: str, experiment: str) -> dict[str, float]:
        overrides = [
            f"data.root={data}",
            "model.size=tiny",
            "training.patch_size=[16,16,16]",
            "training.samples_per_volume=1",
            "training.max_epochs=1",
            "training.num_threads=1",
            f"training.checkpoint_dir={tmp_path / experiment}",
            f"training.system_metrics={mode}",
            "training.system_metrics_interval_s=0.2",
            f"tracking.uri={uri}",
            f"tracking.experiment={experiment}",
        ]
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            train(compose(CONFIG_NAME, overrides=overrides))
        client = MlflowClient(uri)
        (found,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        return found.data.metrics

    on = run("on", "sysmetrics-on")
    assert (
        "system/cpu_utilization_percentage" in on and "system/system_memory_usage_megabytes" in on
    )
    assert "train_loss" in on
    off = run("auto", "sysmetrics-auto")  # a CPU run: auto is off
    assert "train_loss" in off and not any(k.startswith("system/") for k in off)


@pytest.mark.slow
def test_a_cancelled_two_process_cell_resumes_into_its_run(
    project: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runner cancel` interrupts both ranks (SIGINT to each task); rank 0 records the cell
    cancelled and its run KILLED; `runner resume` continues both ranks from rank 0's
    last.pt into the same run, each epoch logged once."""

    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "ddp_cancel.yaml"
    epochs = 30  # long enough for the cancel to find it running after its first epoch
    path.write_text(
        matrix_text(
            "ddp_cancel",
            tiny_data,
            "  model: [unet]",
            "{kind: local, gpus_per_cell: 2}",
            uri,
            [f"training.max_epochs={epochs}", "training.val_interval=10"],
        )
    )
    plan = make_plan(path)
    record = plan.ledger.cell(plan.cells[0].id)
    sweep = background_runner(project, "sweep", str(path))
    wait_for(lambda: (record.state().progress or {}).get("epoch"), 180, "epoch 1 to end")
    assert main(["cancel", str(path)]) == 0
    sweep.communicate(timeout=120)
    assert record.state().state == "cancelled"
    client = MlflowClient(tracking_uri=uri)
    run_id = record.run_id
    assert run_id and client.get_run(run_id).info.status == "KILLED"
    assert (record.checkpoint_dir / "last.pt").is_file()

    capsys.readouterr()
    assert main(["resume", str(path)]) == 0
    state = record.state()
    assert state.state == "done", capsys.readouterr()
    resumed = (record.attempt(state.attempts).read("status") or {}).get("resumed_from_epoch")
    assert state.attempts == 2 and resumed is not None and resumed >= 1
    (run,) = client.search_runs([client.get_experiment_by_name("ddp_cancel").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    # Each epoch at most once (rank 1 never logs; the resumed attempt starts after last.pt),
    # up to the last one.
    assert steps == sorted(set(steps)) and steps[-1] == epochs, steps


@pytest.mark.slow
def test_a_two_task_cell_on_the_slurm_test_cluster_cancels_and_resumes(
    cluster: None,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cell as one SLURM job of 2 tasks (``--ntasks-per-node=2``, one CPU each: the test
    node has 2) training over gloo, cancelled after its first epoch and resumed: one run,
    each epoch logged once, one last.pt, rank 0 alone writing slurm.json, 2 task logs per
    attempt."""
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1]
    data = make_tiny_dataset(tmp_path / "demo")
    executor = (
        "{kind: slurm, gpus_per_cell: 2, cpus_per_task: 1, gpus_per_task: 0, time_min: 10, "
        f"setup: ['export PYTHONPATH={root}']}}"
    )
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = tmp_path / "ddp_slurm.yaml"
    epochs = 12
    path.write_text(
        matrix_text(
            "ddp_slurm",
            data,
            "  model: [unet]",
            executor,
            uri,
            [f"training.max_epochs={epochs}", "training.val_interval=6"],
        )
        + f"sweep_dir: {tmp_path / 'sweeps'}\n"
    )
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path, workdir=tmp_path)
    record = plan.ledger.cell(plan.cells[0].id)
    wait_for(lambda: (record.state().progress or {}).get("epoch"), 300, "epoch 1 on SLURM")
    assert main(["cancel", str(path)]) == 0
    wait_for(lambda: record.state().state == "cancelled", 120, "the cell to be cancelled")
    run_id = record.run_id
    client = MlflowClient(tracking_uri=uri)
    assert run_id and client.get_run(run_id).info.status == "KILLED"

    capsys.readouterr()
    assert main(["resume", str(path)]) == 0
    wait_for(lambda: record.state().state in ("done", "failed"), 300, "the resumed cell")
    logs = sorted(p.name for p in plan.ledger.logs_dir.rglob("*_log.out"))
    state = record.state()
    assert state.state == "done" and state.attempts == 2, (state, logs)
    assert len(logs) == 4  # two tasks, one per rank, in each attempt
    (run,) = client.search_runs([client.get_experiment_by_name("ddp_slurm").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == epochs, steps
    assert [p.name for p in record.checkpoint_dir.glob("*.pt")].count("last.pt") == 1
    for attempt in (1, 2):
        slurm = record.attempt(attempt).read("slurm") or {}
        assert slurm.get("starts") == 1, (attempt, slurm)  # rank 0 alone wrote it


def test_gpus_per_cell_is_checked_with_the_matrix(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docker and local refuse more ranks than their listed GPUs, naming the key, at plan
    time (exit 2), and a local machine with fewer GPUs refuses at submit."""
    from runner.errors import RunnerError
    from runner.executors.local.backend import LocalBackend, LocalExecutorOptions

    data = make_tiny_dataset(project / "demo")
    uri = f"sqlite:///{project / 'mlruns.db'}"
    for name, executor, expected in [
        ("dock", "{kind: docker, gpus: [0], gpus_per_cell: 2}", "gpus lists 1 GPU(s)"),
        ("loc", "{kind: local, gpus: [0], gpus_per_cell: 2}", "gpus lists 1 GPU(s)"),
        ("zero", "{kind: local, gpus_per_cell: 0}", "greater than 0"),
    ]:
        path = project / f"{name}.yaml"
        path.write_text(matrix_text(name, data, "  model: [unet]", executor, uri))
        assert main(["plan", str(path)]) == 2
        err = capsys.readouterr().err
        assert "gpus_per_cell" in err and expected in err, err
        assert "Traceback" not in err
    backend = LocalBackend(LocalExecutorOptions(gpus_per_cell=3), project / "logs")
    backend.gpus.gpus = [0, 1]  # a machine with two GPUs
    with pytest.raises(RunnerError, match="gpus_per_cell=3, but the local executor has 2 GPU"):
        backend.preflight()


class _StopAfter:
    """A StopRequest that turns true at its ``n``-th reading (the recipe reads it at each
    epoch's start and after each optimizer step): a stop that reaches one rank only."""

    def __init__(self, n: int) -> None:
        self.n, self.reason = n, None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def __bool__(self) -> bool:
        self.n -= 1
        if self.n <= 0:
            self.request("stop requested on rank 1")
        return self.reason is not None


def _rank_main(
    rank: int, port: int, overrides: list[str], uri: str, run_id: str, out: str, stop_at: int
) -> None:
    """One rank of a 2-process group, as the runner's job would start it (env:// variables)."""
    import os

    from hydra import compose, initialize_config_dir

    from recipes.contract import RunContext
    from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
    from recipes.segmentation.train import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(WORLD_SIZE="2", LOCAL_RANK=str(rank))
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    stop = _StopAfter(stop_at) if rank == 1 and stop_at else None
    ckpt = Path(out).parent / "ckpt"
    ctx = RunContext(uri, run_id, ckpt, stop=stop)  # type: ignore[arg-type]
    result = train(cfg, ctx)
    Path(f"{out}.{rank}").write_text(json.dumps([result.status, result.reason]))


@pytest.mark.slow
def test_a_stop_on_one_rank_stops_both_at_the_same_step_and_resumes_exactly(
    tmp_path: Path, tiny_data: Path
) -> None:
    """Rank 1 alone is asked to stop after its first step: both ranks stop there (the flag
    is all-reduced each step), rank 0 writes the step checkpoint, and the group resumed from
    it ends with the metrics of an uninterrupted 2-process run."""
    import torch.multiprocessing as mp

    from recipes.components.training.checkpoint import LAST
    from tests.e2e import TINY, free_port

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ddp-stop")
    overrides = ["data=demo", f"data.root={tiny_data}", *TINY, "training.num_threads=1"]

    def group(name: str, run_id: str, stop_at: int = 0) -> list[list[str]]:
        (tmp_path / name).mkdir(exist_ok=True)
        out = str(tmp_path / name / "result")
        args = (free_port(), overrides, uri, run_id, out, stop_at)
        mp.start_processes(_rank_main, args, nprocs=2, join=True, start_method="spawn")
        return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]

    whole = client.create_run(exp).info.run_id
    assert [s for s, _ in group("whole", whole)] == ["done", "done"]

    stopped = client.create_run(exp).info.run_id
    first = group("stop", stopped, stop_at=2)
    assert first == [
        ["interrupted", "stop requested on another rank"],
        ["interrupted", "stop requested on rank 1"],
    ]
    import torch

    saved = torch.load(tmp_path / "stop" / "ckpt" / LAST, weights_only=False)
    assert saved["in_epoch"]["batches"] == 1  # the step both ranks stopped at
    (tmp_path / "stop" / "result.0").unlink()
    # The next attempt: same run, same checkpoint dir, nothing asks it to stop.
    (tmp_path / "stop").rename(tmp_path / "resumed")
    assert [s for s, _ in group("resumed", stopped)] == ["done", "done"]
    for key in ("train_loss", "val_dice"):
        a = [m.value for m in client.get_metric_history(whole, key)]
        b = [m.value for m in client.get_metric_history(stopped, key)]
        assert len(a) == len(b) == 2 and b == pytest.approx(a, rel=1e-5, abs=1e-6), key
