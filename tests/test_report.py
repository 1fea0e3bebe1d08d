"""``runner report`` on a real finished matrix: its figures are recomputed independently
from the MLflow runs, its plots are real PNGs, and each report is a fresh run of
``<matrix>/reports``. Also (fast) the figures' artists and the terminal table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.matrix.cells import Cell
from runner.report import plots
from runner.report.stats import CellResult, Group
from tests.e2e import make_tiny_dataset, matrix_text


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


@pytest.mark.slow
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
    # The report is a run of "rep/reports", ended at once; the cells' experiment holds cells.
    assert all("runner.cell_id" in r.data.tags for r in client.search_runs([exp.experiment_id]))
    reports = client.get_experiment_by_name("rep/reports")
    first = client.search_runs([reports.experiment_id])
    assert len(first) == 1 and first[0].info.status == "FINISHED"
    assert first[0].data.tags["runner.summary"] == "true"
    logged = {a.path for a in client.list_artifacts(first[0].info.run_id, "report")}
    assert {"report/report.json", "report/groups.csv", "report/learning_curves.png"} <= logged
    # GPU-hours: a column per group, the total (CPU cells: 0 GPU-h, their wall hours), and
    # every cell's run carries its own.
    assert report["gpu_hours"]["gpu_hours"] == 0 and report["gpu_hours"]["wall_hours"] > 0
    assert all(g["gpu_hours"] == 0 for g in report["groups"])
    assert all(
        r.data.metrics["wall_hours"] > 0 for r in map(client.get_run, (x.info.run_id for x in runs))
    )
    from PIL import Image

    for png in ("dice_by_model.png", "learning_curves.png"):
        with Image.open(tmp_path / png) as img:
            assert min(img.info["dpi"]) >= 199.5
    # The run carries the report's trust notes (2 seeds: intervals too wide) and its digest.
    assert "n = 2 over seeds" in first[0].data.tags["runner.trust"]
    # The same report again is not logged again ...
    assert main(["report", str(path), "--format", "csv", "-o", str(tmp_path)]) == 0
    said = capsys.readouterr().err
    assert f"unchanged since MLflow run {first[0].info.run_id}: not logged again" in said
    assert len(client.search_runs([reports.experiment_id])) == 1
    # ... a different one is a second run; the first is not reopened (its end stays put).
    assert (
        main(["report", str(path), "--format", "json", "--delta", "0.1", "-o", str(tmp_path)]) == 0
    )
    capsys.readouterr()
    again = client.search_runs([reports.experiment_id], order_by=["attribute.start_time ASC"])
    assert len(again) == 2 and all(r.info.status == "FINISHED" for r in again)
    before = client.get_run(first[0].info.run_id).info
    assert (before.end_time, before.status) == (first[0].info.end_time, "FINISHED")
    assert again[1].info.run_id != first[0].info.run_id


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_summary_run_left_among_the_cells_is_retired(
    finished: tuple[Path, str], capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older runner's one summary run sat in the cells' experiment, reopened by every
    report; the next report deletes it (soft: restorable) and forgets its id."""
    path, uri = finished
    monkeypatch.chdir(path.parent)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rep")
    old = client.create_run(
        exp.experiment_id, run_name="rep_summary", tags={"runner.summary": "true"}
    )
    id_file = path.parent / "sweeps" / "rep" / "summary_run_id"
    id_file.write_text(old.info.run_id)
    assert main(["report", str(path), "--format", "csv", "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    assert client.get_run(old.info.run_id).info.lifecycle_stage == "deleted"
    assert not id_file.exists()
    active = client.search_runs([exp.experiment_id])
    assert active and all("runner.cell_id" in r.data.tags for r in active)


@pytest.mark.slow
def test_report_folder_paper_tables_html_and_groups_without_results(
    finished: tuple[Path, str], capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each report leaves only its own files; md/latex print the ranking; --html writes one
    self-contained page; a matrix with nothing done writes nothing, lists its groups with
    why, and exits 1."""
    path, uri = finished
    monkeypatch.chdir(path.parent)
    out = tmp_path / "out"
    base = ["report", str(path), "--no-mlflow", "-o", str(out)]
    assert main([*base, "--baseline", "unet", "--format", "csv"]) == 0
    assert (out / "per_class_vs_baseline.csv").is_file()
    capsys.readouterr()
    (out / "mine.txt").write_text("a user's note")
    assert main([*base, "--format", "md", "--html"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| Rank | Group | n | Val Dice | Val 95% CI |")
    assert md.splitlines()[2].split(" | ")[1] in {"unet", "segresnet"}
    assert not (out / "per_class_vs_baseline.csv").exists()  # the earlier report's: gone
    assert not (out / "per_class_vs_baseline.png").exists()
    assert (out / "mine.txt").is_file() and (out / "ranking.tex").is_file()
    page = (out / "report.html").read_text()
    assert "How far to trust this" in page and "n=2 &lt; 3: too few to compare" in page
    assert page.count('src="data:image/png;base64,') == 2  # dice_by_model, learning curves
    assert main([*base, "--format", "latex"]) == 0
    assert capsys.readouterr().out.startswith("\\begin{tabular}")
    assert not (out / "report.html").exists()  # not asked for this time
    assert main([*base, "--budget-factor", "0.5"]) == 2
    assert "a factor >= 1" in capsys.readouterr().err
    # A matrix of the same data with nothing done: exit 1, nothing written, groups listed.
    data = make_tiny_dataset(tmp_path / "demo")
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(
        matrix_text("fresh", data, "  model: [unet]\n  seed: [0]", "{kind: debug}", uri)
    )
    empty = tmp_path / "empty"
    assert main(["report", str(fresh), "--no-mlflow", "-o", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "group unet: no result: 1 cell, 1 pending" in err and "nothing to report" in err
    assert not empty.exists()


def _groups(classes: int = 1) -> list[Group]:
    """Cells of a model x loss x seed matrix (3 x 2 x 3) with made-up results, grouped over
    the seed as the report groups them."""
    import itertools

    groups: dict[str, Group] = {}
    models, losses = ["unet", "segresnet", "basic_unet"], ["dice_ce", "dice"]
    for i, (model, loss, seed) in enumerate(itertools.product(models, losses, [0, 1, 2])):
        values = {"model": model, "loss": loss, "seed": seed}
        cell = Cell(f"{i:012x}", values, (f"model={model}", f"loss={loss}", f"seed={seed}"))
        best = 0.3 + 0.02 * (i % 7)
        curve = [(e, best * e / 4 + 0.01 * seed) for e in range(1, 5)]
        per_class = {f"c{k}": best - 0.01 * k for k in range(classes)}
        label = f"{model.replace('_', '')}_{loss.replace('_', '')}"
        group = groups.setdefault(label, Group(label, {"model": model, "loss": loss}))
        group.cells.append(CellResult(cell, f"run{i}", best, 4, per_class, curve))
    return list(groups.values())


def test_box_plots_say_what_they_pool_with_n_and_group_colours(tmp_path: Path) -> None:
    groups = _groups()
    colors = plots.group_colors(g.label for g in groups)
    figures = dict(plots.dice_by_axis_figures(groups, colors))
    assert set(figures) == {"model", "loss"}
    ax = figures["model"].axes[0]
    assert ax.get_xlabel() == "model"
    assert "pooled over loss × seed" in ax.get_title()
    assert "pooled over model × seed" in figures["loss"].axes[0].get_title()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["unet\nn=6", "segresnet\nn=6", "basic_unet\nn=6"]
    # every point has its group's colour; one legend entry per group
    from matplotlib.colors import to_hex

    seen = {}
    for coll in ax.collections:
        seen[coll.get_label()] = {to_hex(c) for c in coll.get_facecolor()}
    assert set(seen) == {g.label for g in groups}
    for label, hexes in seen.items():
        assert hexes == {to_hex(colors[label])}
    assert len({to_hex(c) for c in colors.values()}) == len(groups)  # no two groups share one
    curves = plots.learning_curves_figure(groups, colors).axes[0]
    assert curves.get_title() and curves.get_xlabel() == "epoch"
    lines = {ln.get_label().split(" (n=")[0]: to_hex(ln.get_color()) for ln in curves.lines}
    assert lines == {label: to_hex(c) for label, c in colors.items()}
    bands = [c for c in curves.collections if c.get_paths()]  # fill_between: one per group
    assert len(bands) == len(groups)
    assert {to_hex(b.get_facecolor()[0]) for b in bands} == set(lines.values())
    for fig in [*figures.values(), curves.figure]:
        plots._plt().close(fig)


def test_band_is_the_std_over_seeds_and_figures_are_saved_at_200_dpi(tmp_path: Path) -> None:
    import statistics

    from PIL import Image

    groups = _groups()
    epochs, means, stds, ns = plots.curve_stats(groups[0])
    at1 = [c.curve[0][1] for c in groups[0].cells]
    assert epochs == [1, 2, 3, 4] and ns == [3] * 4
    assert (means[0], stds[0]) == pytest.approx((statistics.fmean(at1), statistics.stdev(at1)))
    out = tmp_path / "out"
    out.mkdir()
    paths = [*plots.dice_by_axis(groups, out), plots.learning_curves(groups, out)]
    assert len(paths) == 3
    for p in paths:
        with Image.open(p) as img:
            assert min(img.info["dpi"]) >= 199.5


def test_one_class_table_drops_the_per_class_column(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from runner.cli.report_view import print_report
    from runner.report.publish import Report
    from runner.report.stats import group_rows, marginal_effects

    for classes, expect in ((1, False), (2, True)):
        groups = _groups(classes)
        names = [f"c{k}" for k in range(classes)]
        report = Report(group_rows(groups, names), marginal_effects(groups), names, 18, 18)
        for row in report.groups:
            row["gpu_hours"] = 1.5
        report.gpu_hours = {
            "gpu_hours": 27.0,
            "wall_hours": 27.0,
            "gpu_hours_by_state": {"done": 27.0},
            "sources": ["ledger"],
        }
        console = Console(file=io.StringIO(), width=300)
        print_report(console, report, "fig", None)
        text = console.file.getvalue()
        header = next(line for line in text.splitlines() if "val Dice mean ± std" in line)
        assert ("c0" in header) is expect
        assert "GPU-h" in header and "GPU-hours: 27.0 (done 27.0); wall 27.0 h" in text
