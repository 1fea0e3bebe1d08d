"""A search with ASHA, for real: ``runner sweep`` trains the trials (MONAI, tiny data), the
pruner stops the trailing ones at a rung (state ``pruned``, MLflow says so), restarts run
the best configuration again, ``resume --only pruned`` continues a pruned cell to the end in
the same MLflow run, and ``runner report`` tells what pruning saved. Then TPE on the local
executor through the background scheduler: trials are asked as slots free up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.plan import make_plan
from runner.search import study as journal
from tests.e2e import TINY, make_tiny_dataset, wait_for
from tests.test_slurm import cluster  # noqa: F401  (the real SLURM cluster fixture)

pytestmark = pytest.mark.slow

BASE = [
    "data=demo",
    "model=meshnet",
    "model.width=4",
    "model.dilations=[1,2,1]",
    *(t for t in TINY if not t.startswith("training.max_epochs")),
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _matrix(project: Path, data: Path, name: str, body: str) -> Path:
    path = project / f"{name}.yaml"
    base = [*BASE, f"data.root={data}"]
    path.write_text(
        f"name: {name}\nrecipe: segmentation\nbase: {base!r}\n{body}"
        f"tracking: {{uri: 'sqlite:///{project / 'mlruns.db'}'}}\n"
    )
    return path


def test_asha_search_prunes_restarts_resumes_and_reports(
    project: Path, tiny_data: Path, capsys
) -> None:
    path = _matrix(
        project,
        tiny_data,
        "asha_e2e",
        "search:\n  method: random\n  trials: 6\n  seed: 3\n"
        "  space: {optimizer.lr: 'loguniform(1e-5, 3e-1)'}\n"
        "pruner: {kind: asha, min_epochs: 1, max_epochs: 4, reduction_factor: 3}\n"
        "restarts: {seeds: 2, top: 1}\nexecutor: {kind: debug}\n",
    )
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path)
    states = plan.states()
    trials = [c for c in plan.cells if c.origin.startswith("trial")]
    restarts = [c for c in plan.cells if c.origin == "restart"]
    assert len(trials) == 6 and len(restarts) == 2
    by_state = {s: [c for c in trials if states[c.id].state == s] for s in ("pruned", "done")}
    assert by_state["pruned"] and by_state["done"]
    assert len(by_state["pruned"]) + len(by_state["done"]) == 6
    assert all(states[c.id].state == "done" for c in restarts)
    assert {c.values["seed"] for c in restarts} == {1, 2}

    # A busy machine can lock the sqlite store for a moment: the recipe then spools its
    # metrics, and sync uploads them (the designed path), before MLflow is checked.
    assert main(["sync", str(path)]) == 0
    client = MlflowClient(tracking_uri=plan.tracking_uri)
    pruned = by_state["pruned"][0]
    run = client.get_run(states[pruned.id].run_id)
    assert run.data.tags["runner.state"] == "pruned" and run.info.status == "KILLED"
    assert run.data.tags["runner.reason"].startswith("asha: rung ")
    stopped_at = [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")]
    assert stopped_at[-1] in (1, 3)
    # The best trial, run again with other seeds, is what the restarts are of.
    best = max(by_state["done"], key=lambda c: states[c.id].objective)
    assert {c.tags["restart.of"] for c in restarts} == {best.id}
    assert client.get_run(states[best.id].run_id).data.tags["runner.trial"].isdigit()

    # resume --only pruned: to max_epochs, from its checkpoint, in the same MLflow run.
    run_id = states[pruned.id].run_id
    assert main(["resume", str(path), "--only", "pruned", "--cells", pruned.id]) == 0
    assert main(["sync", str(path)]) == 0
    after = make_plan(path).states()[pruned.id]
    assert after.state == "done" and after.run_id == run_id and after.attempts == 2
    steps = [m.step for m in client.get_metric_history(run_id, "val_dice")]
    assert steps == list(range(1, 5))
    assert client.get_run(run_id).data.tags["runner.state"] == "done"
    capsys.readouterr()

    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pruned at each rung" in out and "pruning saved" in out
    report = json.loads((plan.ledger.root / "report" / "search.json").read_text())
    [study] = report["studies"]
    p = study["pruning"]
    assert p["epochs"] < p["epochs_if_full"] == 6 * 4
    assert sum(p["pruned_by_rung"].values()) == len(by_state["pruned"])
    assert study["best"]["cell"] in {c.id for c in by_state["done"]} | {pruned.id}
    [restart] = report["restarts"]
    assert restart["n"] == 1 and restart["restarts_done"] == 2
    for name in ("search_curves.png", "search_marginals.png", "trials.csv"):
        assert (plan.ledger.root / "report" / name).is_file()

    # Nothing is left to do: a sweep submits nothing.
    assert main(["sweep", str(path)]) == 0
    assert "nothing new to submit" in capsys.readouterr().out


def test_tpe_asks_as_slots_free_up_in_the_background(project: Path, tiny_data: Path) -> None:
    path = _matrix(
        project,
        tiny_data,
        "tpe_e2e",
        "search:\n  method: tpe\n  trials: 4\n  startup: 2\n  seed: 0\n"
        "  space: {optimizer.lr: 'loguniform(1e-4, 1e-1)', model.width: 'int_uniform(2, 6)'}\n"
        "pruner: {kind: asha, min_epochs: 1, max_epochs: 2, reduction_factor: 2}\n"
        "executor: {kind: local, slots: 2}\n",
    )
    assert len(make_plan(path).cells) == 2  # the startup trials; TPE asks the others
    assert main(["sweep", str(path), "--no-wait"]) == 0

    def settled() -> bool:
        plan = make_plan(path)
        states = plan.states().values()
        return len(plan.cells) == 4 and all(s.state in ("done", "pruned") for s in states)

    wait_for(settled, 300, "the background scheduler to ask and run 4 trials")
    plan = make_plan(path)
    [st] = plan.search.studies
    slots = sorted(p.name for p in (st.dir / "slots").iterdir())
    assert slots == ["0002.json", "0003.json"]
    # Every trial reached the study with its outcome; the asked ones saw finished ones.
    deadline = time.monotonic() + 30
    while True:
        done = [t for t in journal.trials(plan.search.journal, st.name) if t.state.is_finished()]
        if len(done) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(done) == 4
    assert {t.state.name for t in done} <= {"COMPLETE", "PRUNED"}


def test_a_pruned_plain_grid(project: Path, tiny_data: Path) -> None:
    """A pruner without a search: the grid's cells are the trials of one study."""
    path = _matrix(
        project,
        tiny_data,
        "grid_asha",
        "axes: {optimizer.lr: [1.0e-5, 3.0e-3, 1.0e-1, 1.0e-2]}\n"
        "pruner: {kind: asha, min_epochs: 1, max_epochs: 3, reduction_factor: 2}\n"
        "executor: {kind: debug}\n",
    )
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path)
    states = plan.states()
    assert {s.state for s in states.values()} <= {"done", "pruned"}
    assert any(s.state == "pruned" for s in states.values())
    assert any(s.state == "done" for s in states.values())
    [st] = plan.search.studies
    trials = journal.trials(plan.search.journal, st.name)
    assert sorted(t.user_attrs["cell_id"] for t in trials) == sorted(c.id for c in plan.cells)


# --- across SLURM array tasks --------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
def test_asha_search_across_slurm_array_chunks(project: Path, tiny_data: Path) -> None:
    """On the real cluster: each ``runner sweep`` submits the next ``search.batch`` trials as
    one array; the array tasks report to the study's journal in the sweep directory, so the
    second array's cells are judged against the first's rung values; a trailing cell ends
    ``pruned`` in the ledger and in its MLflow run, the others ``done``."""
    from tests.test_slurm import ROOT, wait_states

    executor = (
        "{kind: slurm, cpus_per_task: 1, gpus_per_task: 0, time_min: 10, "
        f"setup: ['export PYTHONPATH={ROOT}']}}"
    )
    # Two learning rates that learn and two that don't (they tie on a plateau at the rung).
    path = _matrix(
        project,
        tiny_data,
        "asha_slurm",
        "search:\n  method: grid\n  seed: 0\n  batch: 2\n"
        "  space: {optimizer.lr: 'choice(3.0e-2, 1.0e-2, 1.0e-6, 1.0e-7)'}\n"
        "pruner: {kind: asha, min_epochs: 1, max_epochs: 2, reduction_factor: 2}\n"
        f"executor: {executor}\n",
    )
    ended = ("done", "pruned", "failed", "diverged", "cancelled")

    def settled(n: int) -> bool:
        return sum(s.state in ended for s in make_plan(path).states().values()) >= n

    arrays = []
    for n in (2, 4):
        assert main(["sweep", str(path)]) == 0  # returns once submitted: SLURM keeps the queue
        wait_for(lambda n=n: settled(n), 300, f"{n} trials to end on the cluster")
        plan = make_plan(path)
        jobs = {
            c.id: plan.ledger.cell(c.id).attempt(1).read("job")["job_id"]
            for c in plan.cells
            if plan.ledger.cell(c.id).attempts()
        }
        arrays.append(jobs)
    first, both = arrays
    assert len(first) == 2 and len(both) == 4
    base = {cid: job.split("_")[0] for cid, job in both.items()}
    # Two arrays (one sbatch each), one per sweep, of the two chunks.
    assert len(set(base.values())) == 2 and len({base[c] for c in first}) == 1
    # The ledger says so before the tasks exit; SLURM follows a moment later. A pruned cell
    # is a task that ended as it should: COMPLETED, not FAILED.
    ended_jobs = wait_states(
        list(both.values()), lambda s: s not in ("PENDING", "RUNNING", "COMPLETING"), 60
    )
    assert set(ended_jobs.values()) == {"COMPLETED"}, ended_jobs

    plan = make_plan(path)
    states = plan.states()
    by_state = {s: [c for c in plan.cells if states[c.id].state == s] for s in ("pruned", "done")}
    assert len(by_state["pruned"]) + len(by_state["done"]) == 4, states
    assert by_state["pruned"] and by_state["done"]
    assert main(["sync", str(path)]) == 0
    client = MlflowClient(tracking_uri=plan.tracking_uri)
    for cell in by_state["pruned"]:
        run = client.get_run(states[cell.id].run_id)
        assert run.data.tags["runner.state"] == "pruned" and run.info.status == "KILLED"
        assert run.data.tags["runner.reason"].startswith("asha: rung 0 (epoch 1)")
    # Rung values live in the sweep dir's journal: the second array's tasks weighed the
    # first array's values (and each other's, as they came in).
    [st] = plan.search.studies
    trials = {t.user_attrs["cell_id"]: t for t in journal.trials(plan.search.journal, st.name)}
    assert set(trials) == set(both)
    assert all("asha:b0:r0" in t.system_attrs for t in trials.values())
    assert all(trials[c].system_attrs["asha:b0:r0:seen"] >= 3 for c in both if c not in first)
    assert {t.state.name for t in trials.values()} == {"COMPLETE", "PRUNED"}
