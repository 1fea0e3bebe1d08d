"""DDP's parts with a real gloo group of 2 processes: sharded validation scores what one
process scores over all volumes; gradient accumulation all-reduces once per optimizer step;
the diffusion recipe's DDP cell through the runner trains as one process with the global
batch; a rank killed mid-training fails its cell, which resumes into the same run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from recipes.components.data.demo_data import ensure_demo_dataset
from runner.cli import main
from runner.plan import make_plan
from tests.e2e import TINY, background_runner, free_port, make_tiny_dataset, matrix_text, wait_for

#: 6 cases, half validated: 3 volumes over 2 ranks, an uneven shard (2 + 1).
SEG = [
    "data=demo",
    "data.val_fraction=0.5",
    *TINY,
    "training.metrics.hd95=true",
    "training.metrics.surface_dice=true",
]


def _compose(root: Path, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from recipes.components.models.sizes import effective_model_config
    from recipes.segmentation import CONFIG_DIR, CONFIG_NAME

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=[f"data.root={root}", *overrides])
    cfg.model = effective_model_config(cfg.model)
    return cfg


def _validation(cfg: Any, dist: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model, data, metrics) of an untrained model seeded from ``cfg.seed``, validated on
    this rank's share (``dist``) or on every volume."""
    import torch

    from recipes.components.data.loaders import build_data
    from recipes.components.data.slices import build_inferer
    from recipes.components.models.build import build_model
    from recipes.components.training.losses import build_loss
    from recipes.components.training.validation import evaluate

    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = build_model(cfg.model)
    data = build_data(cfg.data, cfg.training, cfg.seed)
    sharded = dist is not None and data.shard(dist.rank, dist.world)
    loss_fn = build_loss(cfg.loss, cfg.data.num_classes)
    inferer = build_inferer(cfg.training, None)
    dice, extra = evaluate(
        model, data.val_loader, torch.device("cpu"), cfg, inferer, loss_fn, dist=dist
    )
    return (
        model,
        data,
        {
            "dice": dice.tolist(),
            **extra,
            "sharded": sharded,
            "volumes": len(data.val_loader),
        },
    )


def _grad_syncs(cfg: Any, model: Any, data: Any, dist: Any) -> dict[str, Any]:
    """All-reduce calls of one epoch with accumulate_steps 1 and 2 (a comm hook counts the
    buckets DDP reduces), and a checksum of the weights after each."""
    import torch
    from omegaconf import open_dict

    from recipes.components.training.checkpoint import Progress
    from recipes.components.training.loop import Trainee, train_one_epoch
    from recipes.components.training.losses import build_loss
    from recipes.components.training.optim import build_optimizer, build_scheduler

    ddp = dist.wrap(model)
    calls = [0]

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    # DDP checks the hook's annotations at run time: none here (this module's are strings).
    def counting(state, bucket):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting)
    out: dict[str, Any] = {"batches": len(data.train_loader)}
    # A first epoch unmeasured: DDP rebuilds its buckets after its first backward.
    for accumulate in (1, 1, 2):
        with open_dict(cfg):
            cfg.training.accumulate_steps = accumulate
        optimizer = build_optimizer(cfg.optimizer, model, cfg.model.name)
        schedule = build_scheduler(cfg.scheduler, optimizer, 1, 1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loss_fn = build_loss(cfg.loss, cfg.data.num_classes)
        trainee = Trainee(
            ddp, loss_fn, optimizer, schedule, scaler, torch.device("cpu"), cfg.training, dist
        )
        data.set_epoch(1)
        calls[0] = 0
        train_one_epoch(trainee, data.train_loader, 1, Progress())
        out[f"syncs_{accumulate}"] = calls[0]
        out[f"weights_{accumulate}"] = float(sum(p.double().sum() for p in model.parameters()))
    return out


def _rank(rank: int, port: int, root: str, out: str) -> None:
    import torch

    from recipes.components.training.distributed import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    os.environ.update(WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = init_distributed(torch.device("cpu"), 2)
    try:
        model, data, metrics = _validation(_compose(Path(root), SEG), dist)
        metrics.update(_grad_syncs(_compose(Path(root), SEG), model, data, dist))
        Path(f"{out}.{rank}").write_text(json.dumps(metrics))
    finally:
        dist.close()


@pytest.mark.slow
def test_sharded_validation_and_accumulation_over_two_ranks(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    root = ensure_demo_dataset(tmp_path / "demo", cases=6, size=24, seed=0)
    out = str(tmp_path / "rank")
    mp.start_processes(
        _rank, (free_port(), str(root), out), nprocs=2, join=True, start_method="spawn"
    )
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    _, _, one = _validation(_compose(root, SEG))

    # Validation: 2 + 1 volumes, each scored once; every rank reads the whole set's numbers.
    assert [r["sharded"] for r in ranks] == [True, True]
    assert [r["volumes"] for r in ranks] == [2, 1] and one["volumes"] == 3
    assert one["dice"][0] > 0  # an untrained net still overlaps: the comparison means something
    for r in ranks:
        for key in ("val_loss", "val_hd95", "val_surface_dice"):
            assert r[key] == pytest.approx(one[key], rel=1e-6), key
        assert r["dice"] == pytest.approx(one["dice"], rel=1e-6)

    # Accumulation: 2 batches per rank; accumulating 2 reduces once instead of twice, and
    # both ranks end with the same weights.
    for r in ranks:
        assert r["batches"] == 2 and r["syncs_1"] == 2 * r["syncs_2"] > 0, r
    for key in ("weights_1", "weights_2"):
        assert ranks[0][key] == ranks[1][key]


def _diffusion_matrix(name: str, data: Path, executor: str, uri: str, batch: int) -> str:
    base = [
        "data=demo",
        f"data.root={data}",
        "data.val_fraction=0.43",
        "dims=2d",
        "model=medsegdiff_tiny",
        "training.patch_size=[16,16]",
        f"training.batch_size={batch}",
        "training.samples_per_volume=2",
        "training.max_steps=4",
        "training.val_every=2",
        "training.log_every=1",
        "training.checkpoint_every=1",
        "training.num_threads=1",
        "diffusion.sampling_steps=3",
        "diffusion.num_samples=2",
        "optimizer=adamw",
        "optimizer.lr=1.0e-3",
        "scheduler=constant",
        "loss=mse",
        "training.system_metrics=on",
        "training.system_metrics_interval_s=0.5",
    ]
    return (
        f"name: {name}\nrecipe: diffusion\nbase: {base!r}\naxes:\n  seed: [0]\n"
        f"executor: {executor}\ntracking: {{uri: '{uri}'}}\n"
    )


@pytest.mark.slow
def test_a_two_process_diffusion_cell_trains_as_one_process_with_the_global_batch(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MedSegDiff as a DDP cell (2 ranks × 1 volume of 2 slices) against one process with 2
    volumes: one run, each metric once per step, one last.pt; step 1's loss is the same
    number (same weights, the same slices and noise rows, split over the ranks), and the
    later steps and the validation (sharded 2 + 1 volumes, per-case noise) differ only by
    float summation order."""
    # 7 cases: 4 train (2 steps of the global batch of 2 volumes a data epoch, no padding),
    # 3 validate (2 + 1 over the ranks).
    data = ensure_demo_dataset(project / "demo16", cases=7, size=16, seed=0)
    uri = f"sqlite:///{project / 'mlruns.db'}"
    results = {}
    for name, executor, batch in [
        ("diff2", "{kind: local, gpus_per_cell: 2}", 1),
        ("diff1", "{kind: local}", 2),
    ]:
        path = project / f"{name}.yaml"
        path.write_text(_diffusion_matrix(name, data, executor, uri, batch))
        assert main(["sweep", str(path)]) == 0, capsys.readouterr()
        plan = make_plan(path)
        (state,) = plan.states().values()
        assert state.state == "done", state
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert run.info.status == "FINISHED"
        assert "system/cpu_utilization_percentage" in run.data.metrics  # rank 0's monitor
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in ("train_loss", "val_dice", "val_mse")
        }
        (cell,) = plan.cells
        ckpt = plan.ledger.cell(cell.id).checkpoint_dir
        assert sorted(p.name for p in ckpt.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
        results[name] = history

    ddp, one = results["diff2"], results["diff1"]
    assert [s for s, _ in ddp["train_loss"]] == [1, 2, 3, 4]  # rank 1 logs nothing
    assert [s for s, _ in ddp["val_dice"]] == [2, 4]
    assert ddp["train_loss"][0][1] == pytest.approx(one["train_loss"][0][1], rel=1e-5)
    for key in ("train_loss", "val_dice", "val_mse"):
        a, b = [v for _, v in ddp[key]], [v for _, v in one[key]]
        print(f"{key}: 2 ranks {a}, 1 process {b}")
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), (key, a, b)


def _rank_pids(folder: Path) -> dict[int, int]:
    """{global rank: pid} of the submitit tasks whose job folder is under ``folder``."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if "submitit.core._submit" in cmd and str(folder) in cmd:
                found[int(proc.environ().get("SUBMITIT_LOCAL_GLOBALID", "-1"))] = proc.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_a_rank_killed_mid_training_fails_its_cell_which_resumes_into_its_run(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL to rank 1 (the OOM killer's way): rank 0's next collective fails at once
    (gloo sees the socket close), so the cell ends `failed` with the reason, its run FAILED
    and last.pt kept, long before `training.ddp_timeout_min`; `runner resume` then finishes
    it in the same run."""
    data = make_tiny_dataset(project / "demo")
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "ddp_kill.yaml"
    epochs = 40
    path.write_text(
        matrix_text(
            "ddp_kill",
            data,
            "  model: [unet]",
            "{kind: local, gpus_per_cell: 2}",
            uri,
            [f"training.max_epochs={epochs}", "training.val_interval=20"],
        )
    )
    plan = make_plan(path)
    record = plan.ledger.cell(plan.cells[0].id)
    sweep = background_runner(project, "sweep", str(path))
    wait_for(lambda: (record.state().progress or {}).get("epoch"), 180, "epoch 1 to end")
    pids = _rank_pids(plan.ledger.logs_dir)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGKILL)
    out, _ = sweep.communicate(timeout=180)  # bounded: not the group's 30-minute timeout

    state = record.state()
    assert state.state == "failed", (state, out[-3000:])
    assert "lost its DDP group" in (state.reason or ""), state
    with capsys.disabled():
        print(f"\nrank 1 killed at epoch {(state.progress or {}).get('epoch')}: {state.reason}")
    client = MlflowClient(uri)
    run_id = record.run_id
    assert run_id and client.get_run(run_id).info.status == "FAILED"
    assert (record.checkpoint_dir / "last.pt").is_file()
    killed_at = (state.progress or {}).get("epoch") or 0
    assert killed_at < epochs

    capsys.readouterr()
    assert main(["resume", str(path)]) == 0
    state = record.state()
    assert state.state == "done", capsys.readouterr()
    (run,) = client.search_runs([client.get_experiment_by_name("ddp_kill").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == epochs, steps
