"""End to end, for real: matrix -> local executor (submitit subprocesses) -> MONAI training ->
MLflow (sqlite store, then a real ``mlflow server``) -> ledger -> status."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.plan import make_plan
from tests.e2e import make_tiny_dataset, matrix_text, mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _check_runs(uri: str, matrix: str, plan_cells: list, expect_state: str = "done") -> None:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(matrix)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(c.run_name for c in plan_cells)
    by_cell = {r.data.tags["runner.cell_id"]: r for r in runs}
    for cell in plan_cells:
        run = by_cell[cell.id]
        tags, params = run.data.tags, run.data.params
        assert tags["runner.matrix"] == matrix and tags["runner.executor"] == "local"
        assert tags["runner.state"] == expect_state
        assert run.info.status == "FINISHED"
        for key, value in cell.values.items():
            assert tags[f"axis.{key}"] == str(value)
        assert "runner.host" in tags and len(tags["mlflow.source.git.commit"]) == 40
        # params: the flattened resolved config, including the axis values
        assert params["model.name"] == cell.values["model"]
        assert params["training.max_epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [1, 2] or [m.step for m in history] == [0, 1]
        assert len(client.get_metric_history(run.info.run_id, "val_dice")) == 2
        assert any(k.startswith("val_dice_") for k in run.data.metrics)
        assert "lr" in run.data.metrics and "epoch_seconds" in run.data.metrics
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "config.yaml" in artifacts


def test_two_cells_local_sqlite_then_nothing_to_resubmit(
    project: Path, tiny_data: Path, capsys
) -> None:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "m.yaml"
    path.write_text(
        matrix_text(
            "e2e_local", tiny_data, "  model: [unet, segresnet]", "{kind: local, slots: 2}", uri
        )
    )
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 cells" in out and "2 done" in out

    plan = make_plan(path)
    states = plan.states()
    assert {s.state for s in states.values()} == {"done"}
    assert all(s.best_val_dice is not None and 0 <= s.best_val_dice <= 1 for s in states.values())
    _check_runs(uri, "e2e_local", plan.cells)

    # A second sweep submits nothing and says why; no new attempt is created.
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "nothing new to submit" in out and "2 done" in out
    assert all(s.attempts == 1 for s in make_plan(path).states().values())

    # After an edit of the matrix, only the new cells are pending: identity is the config.
    path.write_text(path.read_text().replace("[unet, segresnet]", "[unet, segresnet, basic_unet]"))
    edited = make_plan(path).states()
    assert sorted(s.state for s in edited.values()) == ["done", "done", "pending"]
    path.write_text(path.read_text().replace("[unet, segresnet, basic_unet]", "[unet, segresnet]"))

    assert main(["status", str(path)]) == 0
    status = capsys.readouterr().out
    for cell in plan.cells:
        assert cell.run_name in status
    assert "2 cells: 2 done" in status


def test_against_a_real_mlflow_server(project: Path, tiny_data: Path, capsys) -> None:
    with mlflow_server(project) as uri:
        path = project / "m.yaml"
        path.write_text(
            matrix_text(
                "e2e_server",
                tiny_data,
                "  model: [unet]\n  seed: [0, 1]",
                "{kind: local, slots: 2}",
                uri,
            )
        )
        assert main(["sweep", str(path)]) == 0
        plan = make_plan(path)
        assert {s.state for s in plan.states().values()} == {"done"}
        _check_runs(uri, "e2e_server", plan.cells)


def test_failed_and_diverged_cells_are_never_done(project: Path, tiny_data: Path, capsys) -> None:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "m.yaml"
    # lr=1e12 with plain SGD blows the loss up to inf/nan within a step or two (a real
    # divergence, not an injected one); volumes that are not NIfTI inside make the cell raise
    # (a missing data root would be refused before submission: tests/test_preflight.py).
    corrupt = project / "corrupt"
    shutil.copytree(tiny_data, corrupt)
    for volume in (corrupt / "imagesTr").iterdir():
        volume.write_bytes(b"not a NIfTI volume")
    path.write_text(
        matrix_text(
            "e2e_faults",
            tiny_data,
            "  model: [unet]\n  optimizer: [sgd]\n  optimizer.lr: [1.0e12]\n  seed: [0]",
            "{kind: debug}",
            uri,
        )
    )
    path.write_text(
        path.read_text().replace("include: []", "")
        + f"include: [{{model: unet, seed: 1, data.root: {corrupt}, "
        "data.synthetic: false}]\n"
    )
    code = main(["sweep", str(path)])
    assert code == 1  # something failed: the sweep says so in its exit code
    plan = make_plan(path)
    states = {c.values.get("seed"): plan.states()[c.id] for c in plan.cells}
    assert states[0].state == "diverged"
    assert "nan" in (states[0].reason or "").lower() or "inf" in (states[0].reason or "")
    assert states[1].state == "failed" and states[1].reason.startswith("exception:")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("e2e_faults").experiment_id])
    assert {r.data.tags["runner.state"] for r in runs} == {"diverged", "failed"}
    assert {r.info.status for r in runs} == {"FAILED"}
    attempt = plan.ledger.cell(plan.cells[1].id).attempt(1).read("status") or {}
    assert "Traceback" in attempt["error_tail"]
