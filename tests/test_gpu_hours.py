"""GPU-hours from real ledgers (attempts written through runner.ledger), the estimate for
the cells still to run, sacct's usage lines, and (slow) a real tiny local sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import tracking
from runner.executors.resources import gpus_from_env
from runner.executors.slurm.cluster import parse_usage, tres_gpus
from runner.executors.slurm.options import SlurmExecutorOptions, gres_gpus
from runner.ledger import CellRecord, ledger_hours
from runner.plan import Plan, make_plan
from runner.report import estimate as est
from runner.report import gpu_hours as gh
from tests.e2e import make_tiny_dataset, matrix_text

T0 = 1_700_000_000.0


def _plan(tmp_path: Path, axes: str, executor: str = "{kind: local, slots: 1}") -> Plan:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = tmp_path / "m.yaml"
    path.write_text(matrix_text("gh", tmp_path / "data", axes, executor, uri))
    return make_plan(path, tmp_path)


def _attempt(
    record: CellRecord,
    executor: str,
    job_id: str,
    state: str,
    started: float | None,
    ended: float | None,
    **status: object,
) -> None:
    """One attempt as the sweep and the job write it: claim, job.json, status.json."""
    attempt = record.claim(executor, len(record.attempts()))
    assert attempt is not None
    attempt.write("job", {"job_id": job_id, "executor": executor, "time": T0})
    if started is not None:
        data = {"state": state, "started": started, "host": "elsewhere", "pid": 1, "time": T0}
        if ended is not None:
            data["ended"] = ended
        attempt.write("status", {**data, **status})


def test_hours_from_real_ledger_attempts(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "  model: [unet, segresnet]\n  seed: [0, 1]")
    a, b, c, d = (plan.ledger.cell(x.id) for x in plan.cells)
    # a: failed after 1 h on 1 GPU, resumed: done after 2 h on 2 GPUs -> 5 GPU-h, 3 h wall
    _attempt(a, "local", "11", "failed", T0, T0 + 3600, gpus=1)
    _attempt(a, "local", "12", "done", T0 + 4000, T0 + 4000 + 7200, gpus=2, epochs=10)
    # b: a CPU cell (CUDA_VISIBLE_DEVICES="" under the local executor): 0 GPU-h, 0.5 h wall
    _attempt(b, "local", "21", "done", T0, T0 + 1800, gpus=0, epochs=10)
    # c: claimed and submitted, never started: nothing spent
    _attempt(c, "local", "31", "submitted", None, None)
    # d: a docker cell that wrote no gpus of its own: docker.json names its GPU
    _attempt(d, "docker", "cont1", "done", T0, T0 + 900, epochs=10)
    d.attempts()[-1].write("docker", {"container_id": "cont1", "gpu": 3})
    hours = gh.cell_hours(plan, now=T0 + 10**5, here=[])
    ids = [x.id for x in plan.cells]
    assert hours[ids[0]].gpu_hours == pytest.approx(5.0)
    assert hours[ids[0]].wall_hours == pytest.approx(3.0)
    assert hours[ids[0]].attempts == 2 and hours[ids[0]].gpus == 2 and hours[ids[0]].units == 10
    assert hours[ids[1]].gpu_hours == 0 and hours[ids[1]].wall_hours == pytest.approx(0.5)
    assert hours[ids[2]].wall_s == 0 and hours[ids[2]].attempts == 1
    assert hours[ids[3]].gpu_hours == pytest.approx(0.25)
    total = gh.totals(hours)
    assert total["gpu_hours"] == pytest.approx(5.25)
    assert total["gpu_hours_by_state"] == {"done": pytest.approx(5.25), "submitted": 0.0}
    assert gh.summary_line(total).startswith("GPU-hours: 5.25 (done 5.25")
    # status --format json / parquet carry each cell's figures
    from runner.cli.export import rows

    by_id = {r["cell_id"]: r for r in rows(plan, hours)}
    assert by_id[ids[0]]["gpu_hours"] == pytest.approx(5.0)
    assert by_id[ids[1]]["wall_hours"] == pytest.approx(0.5)
    # What the job logs as it ends (ledger only), into a real MLflow store
    assert ledger_hours(a, gpus=None) == (pytest.approx(5.0), pytest.approx(3.0))
    assert ledger_hours(d, gpus=1)[0] == pytest.approx(0.25)  # no gpus in its status: given

    exp = tracking.ensure_experiment(plan.tracking_uri, "gh", tmp_path / "art")
    run_id = tracking.start_cell_run(plan.tracking_uri, exp, "a", {})
    tracking.log_gpu_hours(plan.tracking_uri, run_id, 1.0, 2.0)
    tracking.log_gpu_hours(plan.tracking_uri, run_id, 5.0, 3.0)  # after a resume: the latest wins
    metrics = tracking.client(plan.tracking_uri).get_run(run_id).data.metrics
    assert (metrics["gpu_hours"], metrics["wall_hours"]) == (5.0, 3.0)


def test_report_writes_only_the_figures_that_differ_from_the_runs(tmp_path: Path) -> None:
    """A job logs its ledger figure as it ends; ``runner report`` (log_all) must not log the
    same value again, only a better one (SLURM accounting's) or one the run lacks."""

    plan = _plan(tmp_path, "  seed: [0, 1]")
    a, b = (plan.ledger.cell(x.id) for x in plan.cells)
    _attempt(a, "slurm", "41", "done", T0, T0 + 3600.25, gpus=2, epochs=3)
    _attempt(b, "local", "42", "failed", T0, T0 + 600, gpus=1)
    uri = plan.tracking_uri
    exp = tracking.ensure_experiment(uri, "gh", tmp_path / "art")
    for name, record in (("a", a), ("b", b)):
        record.set_run_id(tracking.start_cell_run(uri, exp, name, {}))
    tracking.log_gpu_hours(uri, a.run_id, *ledger_hours(a, gpus=None))  # what a's job logged
    client = tracking.client(uri)

    def entries(record: CellRecord) -> dict[str, list[float]]:
        return {
            k: [m.value for m in client.get_metric_history(record.run_id, k)]
            for k in ("gpu_hours", "wall_hours")
        }

    hours = gh.cell_hours(plan, now=T0 + 10**5, here=[])
    assert gh.log_all(plan, hours) == 1  # b's job died before it logged: b only
    assert entries(a) == {"gpu_hours": [7200.5 / 3600], "wall_hours": [3600.25 / 3600]}
    assert entries(b) == {"gpu_hours": [pytest.approx(1 / 6)], "wall_hours": [pytest.approx(1 / 6)]}
    assert gh.log_all(plan, gh.cell_hours(plan, now=T0 + 10**5, here=[])) == 0  # again: none
    # sacct charged 4000 s on 2 GPUs (a requeue the ledger missed): a better figure for a
    usage = {"41": (4000.0, 2)}
    assert gh.log_all(plan, gh.cell_hours(plan, usage=usage, now=T0 + 10**5, here=[])) == 1
    assert entries(a)["gpu_hours"][-1] == pytest.approx(8000 / 3600)
    assert len(entries(a)["gpu_hours"]) == 2 and len(entries(b)["gpu_hours"]) == 1
    assert gh.log_all(plan, gh.cell_hours(plan, usage=usage, now=T0 + 10**5, here=[])) == 0


def test_running_and_lost_attempts_count_to_now_and_to_the_last_heartbeat(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path, "  seed: [0, 1]")
    running, lost = (plan.ledger.cell(x.id) for x in plan.cells)
    _attempt(running, "local", "1", "running", T0, None, gpus=1)
    _attempt(lost, "local", "2", "running", T0, None, gpus=1)
    lost.attempts()[-1].write("heartbeat", {"epoch": 3, "time": T0 + 600})
    lost.attempts()[-1].write("monitor", {"state": "failed", "reason": "lost: gone"})
    hours = gh.cell_hours(plan, now=T0 + 1800, here=[])
    assert hours[plan.cells[0].id].wall_s == pytest.approx(1800)
    assert hours[plan.cells[1].id].wall_s == pytest.approx(600)


def test_gpus_from_the_executor_options_when_the_job_did_not_say(tmp_path: Path) -> None:
    slurm = "{kind: slurm, gres: 'gpu:a100:2'}"
    plan = _plan(tmp_path, "  seed: [0]", slurm)
    record = plan.ledger.cell(plan.cells[0].id)
    _attempt(record, "slurm", "77_0", "done", T0, T0 + 3600, epochs=5)
    # No accounting asked: the ledger's hour × the options' 2 GPUs.
    assert gh.cell_hours(plan, here=[])[record.id].gpu_hours == pytest.approx(2.0)
    # Accounting's figure wins: 2 h over its requeues on 4 GPUs.
    usage = {"77_0": (7200.0, 4)}
    hours = gh.cell_hours(plan, usage=usage, here=[])[record.id]
    assert hours.gpu_hours == pytest.approx(8.0) and hours.source == "sacct"
    assert SlurmExecutorOptions(kind="slurm", gpus_per_task=0).cell_gpus() == 0
    assert SlurmExecutorOptions(kind="slurm", gpus_per_cell=2).cell_gpus() == 2
    assert gres_gpus("gpu:a100:2,shard:4") == 2 and gres_gpus("gpu") == 1
    assert gpus_from_env({"CUDA_VISIBLE_DEVICES": "0,3"}) == 2
    assert gpus_from_env({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert gpus_from_env({"NVIDIA_VISIBLE_DEVICES": "void"}) == 0
    assert gpus_from_env({}) is None


def test_slurm_gpus_per_cell_counts_the_cells_gpus_one_per_rank() -> None:
    """gpus_per_cell means the same on SLURM as on local and docker: the cell's GPUs, one per
    rank; a setting that would hold more (ranks × GPUs per task) is refused, saying why."""
    with pytest.raises(ValueError, match="would hold 4 GPUs per cell"):
        SlurmExecutorOptions(kind="slurm", gpus_per_cell=2, gpus_per_task=2)
    with pytest.raises(ValueError, match="ask for gpu:2, one per rank"):
        SlurmExecutorOptions(kind="slurm", gpus_per_cell=2, gres="gpu:a100:1")
    assert SlurmExecutorOptions(kind="slurm", gpus_per_cell=2, gres="gpu:a100:2").cell_gpus() == 2


def test_sacct_usage_lines() -> None:
    """``sacct -X -D -n -P -o JobID,ElapsedRaw,AllocTRES`` as SLURM 22-24 print it: a job
    requeued once has two lines, an array's pending tasks one folded line."""
    text = (
        "4001_0|3600|billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=32G,node=1\n"
        "4001_0|1800|billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=32G,node=1\n"
        "4001_1|120|billing=4,cpu=4,mem=16G,node=1\n"
        "4001_[2-3]|0|billing=4,cpu=4,gres/gpu=1,mem=16G,node=1\n"
        "4001_1.batch|120|cpu=4,mem=16G,node=1\n"
        "4002|60|cpu=1,gres/gpu:h100=1,node=1\n"
        "4003_[0-15%16]|0|\n"  # pending, throttled, nothing allocated yet
    )
    usage = parse_usage(text, {"4001_0", "4001_1", "4001_3", "4002", "4003_7"})
    assert usage == {
        "4001_0": (5400.0, 2),
        "4001_1": (120.0, 0),
        "4001_3": (0.0, 1),
        "4002": (60.0, 1),
        "4003_7": (0.0, 0),
    }
    assert tres_gpus("cpu=4,mem=1G") == 0


def test_estimate_from_done_cells_and_the_cannot_path(tmp_path: Path) -> None:
    axes = "  model: [unet, segresnet]\n  training.batch_size: [1, 2]\n  seed: [0, 1]"
    plan = _plan(tmp_path, axes, "{kind: slurm, gpus_per_task: 2}")
    fresh = est.estimate(plan, plan.states(), gh.cell_hours(plan, here=[]), here=[])
    assert fresh["cannot"] == ["cannot estimate 8 cell(s): no cell is done yet"]
    assert fresh["gpu_hours"] is None and fresh["estimated"] == 0
    by = {
        (c.values["model"], c.values["training.batch_size"], c.values["seed"]): c
        for c in plan.cells
    }
    # unet, batch 1: two done cells, 10 epochs in 1000 s and 2000 s -> median 150 s/epoch
    for seed, wall in ((0, 1000.0), (1, 2000.0)):
        rec = plan.ledger.cell(by[("unet", 1, seed)].id)
        _attempt(rec, "local", f"9{seed}", "done", T0, T0 + wall, gpus=2, epochs=10)
    states = plan.states()
    hours = gh.cell_hours(plan, states, here=[])
    out = est.estimate(plan, states, hours, here=[])
    assert out["cells"] == 6 and out["estimated"] == 0  # the pending unet/1 cells: none left
    # unet batch 1 is done; unet batch 2 and segresnet have no done cell: said, not guessed
    assert out["gpu_hours"] is None
    lines = out["cannot"]
    assert any("model=unet, patch=16x16x16, batch=2" in line for line in lines)
    assert any("model=segresnet" in line and "batch=1" in line for line in lines)
    assert all(line.startswith("cannot estimate 2 cell(s): no done cell with ") for line in lines)
    json.dumps(out)  # plan --json carries it
    # Now one more unet/1 configuration to run: add seed 2 by a new matrix with the same dir.
    plan2 = _plan(tmp_path, axes.replace("[0, 1]", "[0, 1, 2]"), "{kind: slurm, gpus_per_task: 2}")
    states2 = plan2.states()
    out2 = est.estimate(plan2, states2, gh.cell_hours(plan2, states2, here=[]), here=[])
    unet1 = next(e for e in out2["by_config"] if e["model"] == "unet" and e["batch"] == "1")
    assert unet1["cells"] == 1 and unet1["from_done"] == 2
    assert unet1["seconds_per_epoch"] == pytest.approx(150.0)
    # TINY trains 2 epochs: 150 s x 2 epochs x 2 GPUs
    assert unet1["gpu_hours"] == pytest.approx(150 * 2 * 2 / 3600)
    assert out2["estimated"] == 1 and out2["gpu_hours"] == pytest.approx(150 * 2 * 2 / 3600)
    assert out2["gpus_per_cell"] == 2
    assert est.describe(out2)[0].startswith("estimate for 1 of 10 cells to run: 0.167 GPU-hours")
    # What plan/status print and plan --json carries: spent, then the estimate.
    view, _ = est.overview(plan2)
    assert view["gpu_hours"] == pytest.approx((1000 + 2000) * 2 / 3600)
    assert view["estimate"]["gpu_hours"] == pytest.approx(out2["gpu_hours"])
    lines = est.overview_lines(json.loads(json.dumps(view)))
    assert lines[0].startswith("GPU-hours: 1.67 (done 1.67)")
    assert lines[1].startswith("estimate for 1 of 10 cells") and len(lines) == 2 + 3


def test_the_estimate_composes_a_matrix_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profiles the estimate composes (a Hydra start: several times the rest of a
    status) are remembered in the sweep directory: the next status of the same matrix
    composes nothing and estimates the same; a changed matrix composes again."""
    axes = "  model: [unet, segresnet]\n  seed: [0, 1, 2]"
    plan = _plan(tmp_path, axes)
    unet0 = next(c for c in plan.cells if c.values == {"model": "unet", "seed": 0})
    _attempt(plan.ledger.cell(unet0.id), "local", "1", "done", T0, T0 + 100, gpus=1, epochs=10)
    first, _ = est.overview(plan)
    assert first["estimate"]["estimated"] == 2 and len(first["estimate"]["cannot"]) == 1
    assert (plan.ledger.root / est.PROFILES).is_file()

    class NoComposing:
        def __init__(self, recipe: object) -> None:
            raise AssertionError("composed again")

    monkeypatch.setattr(est, "Composer", NoComposing)
    again, _ = est.overview(make_plan(tmp_path / "m.yaml", tmp_path))
    assert again["estimate"] == first["estimate"]
    changed = _plan(tmp_path, axes.replace("[0, 1, 2]", "[0, 1, 2, 3]"))
    with pytest.raises(AssertionError, match="composed again"):
        est.overview(changed)


@pytest.mark.slow
def test_a_real_local_sweep_is_counted_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tiny CPU cells run by the local executor: the job's own start and end make the
    wall hours, the local executor's empty CUDA_VISIBLE_DEVICES makes them CPU cells, and the
    report logs both figures into each cell's run."""
    from mlflow import MlflowClient

    from runner.cli import main

    data = make_tiny_dataset(tmp_path / "demo")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = tmp_path / "m.yaml"
    path.write_text(matrix_text("ghs", data, "  seed: [0, 1]", "{kind: local, slots: 1}", uri))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path, tmp_path)
    hours = gh.cell_hours(plan)
    for cell in plan.cells:
        status = plan.ledger.cell(cell.id).attempts()[-1].read("status") or {}
        h = hours[cell.id]
        assert h.wall_s == pytest.approx(status["ended"] - status["started"])
        assert h.wall_s > 0 and h.gpu_s == 0 and h.units == 2
    assert main(["report", str(path), "--format", "json", "-o", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["gpu_hours"]["wall_hours"] == pytest.approx(
        sum(h.wall_hours for h in hours.values())
    )
    client = MlflowClient(tracking_uri=uri)
    for cell in plan.cells:
        run = client.get_run(plan.ledger.cell(cell.id).run_id)
        assert run.data.metrics["gpu_hours"] == 0
        assert run.data.metrics["wall_hours"] == pytest.approx(hours[cell.id].wall_hours)
        # The job logged the ledger's figures as it ended: the report had nothing to add.
        for key in ("gpu_hours", "wall_hours"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
    # With one done configuration, the estimate for another seed is its time per epoch.
    path.write_text(matrix_text("ghs", data, "  seed: [0, 1, 2]", "{kind: local, slots: 1}", uri))
    plan3 = make_plan(path, tmp_path)
    states = plan3.states()
    out = est.estimate(plan3, states, gh.cell_hours(plan3, states), here=[])
    rates = sorted(hours[c.id].wall_s / 2 for c in plan.cells)
    assert out["estimated"] == 1 and out["gpus_per_cell"] == 0 and out["gpu_hours"] == 0
    assert out["wall_hours"] == pytest.approx(sum(rates) / 2 * 2 / 3600)
