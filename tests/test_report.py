"""``runner report`` on a real finished matrix: its figures are recomputed independently
from the MLflow runs, its plots are real PNGs, and it is logged as a summary run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from tests.e2e import make_tiny_dataset, matrix_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2 models x 2 seeds matrix run to the end (in-process, debug executor)."""
    root = tmp_path_factory.mktemp("report")
    data = make_tiny_dataset(root / "demo")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    path = root / "m.yaml"
    path.write_text(
        matrix_text("rep", data, "  model: [unet, segresnet]\n  seed: [0, 1]", "{kind: debug}", uri)
    )
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        assert main(["sweep", str(path)]) == 0
    finally:
        os.chdir(old)
    return path, uri


def test_figures_match_a_computation_from_mlflow(
    finished: tuple[Path, str], capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, uri = finished
    monkeypatch.chdir(path.parent)  # sweep_dir is relative to the working directory
    assert main(["report", str(path), "--format", "json", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.split("\nreport files in")[0])
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rep")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "runner.cell_id" in r.data.tags]
    assert len(runs) == 4 and report["cells_done"] == 4
    by_model: dict[str, list[float]] = {}
    for r in runs:
        by_model.setdefault(r.data.tags["axis.model"], []).append(r.data.metrics["best_val_dice"])
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"unet", "segresnet"}
    for model, values in by_model.items():
        g = groups[model]
        assert g["n"] == 2
        assert g["dice_mean"] == pytest.approx(statistics.fmean(values))
        assert g["dice_std"] == pytest.approx(statistics.stdev(values))
    means = [g["dice_mean"] for g in report["groups"]]
    assert means == sorted(means, reverse=True)  # best first
    overall = statistics.fmean(statistics.fmean(v) for v in by_model.values())
    effects = {e["value"]: e for e in report["effects"] if e["axis"] == "model"}
    for model, values in by_model.items():
        assert effects[model]["effect"] == pytest.approx(statistics.fmean(values) - overall)
    # per class: the lesion Dice at each cell's best epoch, averaged
    lesion = [g["dice_lesion_mean"] for g in report["groups"]]
    assert all(0 <= x <= 1 for x in lesion)
    for png in ("dice_by_model.png", "learning_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("runner.summary") == "true"
    ]
    assert len(summary) == 1
    logged = {a.path for a in client.list_artifacts(summary[0].info.run_id, "report")}
    assert {"report/report.json", "report/groups.csv", "report/learning_curves.png"} <= logged


def test_baseline_deltas_and_errors(
    finished: tuple[Path, str], capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = finished
    monkeypatch.chdir(path.parent)
    assert (
        main(
            [
                "report",
                str(path),
                "--format",
                "json",
                "--baseline",
                "unet",
                "--no-mlflow",
                "-o",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads(out.split("\nreport files in")[0])
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["unet"]["delta_lesion"] == 0
    assert groups["segresnet"]["delta_lesion"] == pytest.approx(
        groups["segresnet"]["dice_lesion_mean"] - groups["unet"]["dice_lesion_mean"]
    )
    assert main(["report", str(path), "--baseline", "unett", "--no-mlflow"]) == 2
    assert "did you mean 'unet'?" in capsys.readouterr().err
    assert main(["report", str(path), "--format", "table", "--no-mlflow", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "± " in out and "marginal effect" in out
