"""The saved MLflow UI view of a matrix (runner.report.mlflow_view) and the axis params.

The format is checked against the installed MLflow's own UI bundle, then for real: a tiny
sweep into a real store, a real ``mlflow server``, and headless Chromium rendering the deep
link; the rendered table must have the view's columns, its groups, and the group means of
``runner report``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest

from runner import tracking
from runner.cli import main
from runner.ledger import Ledger
from runner.matrix.cells import Cell
from runner.plan import make_plan
from runner.report import mlflow_view as mv
from tests.e2e import free_port, make_tiny_dataset, matrix_text, mlflow_server

UI_JS = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _ui_fields(*first: str) -> set[str]:
    """The string array of the installed UI that starts with ``first`` (the fields the
    shared-view loader picks from the saved state)."""
    start = re.escape(json.dumps(list(first), separators=(",", ":"))[:-1])
    for js in sorted(UI_JS.glob("*.js")):
        m = re.search(start + r'(?:,"[A-Za-z]+")*\]', js.read_text(errors="replace"))
        if m:
            return set(json.loads(m.group(0)))
    raise AssertionError(f"no field list starting with {first} in {UI_JS}")


def test_the_view_uses_only_fields_the_installed_ui_reads() -> None:
    state = mv.view_state(["model", "seed"])
    ui_state = _ui_fields("selectedColumns", "columnOrder")  # EXPERIMENT_PAGE_UI_STATE_FIELDS
    facets = _ui_fields("searchFilter", "orderByKey")  # the search facets' fields
    assert {"groupBy", "columnOrder", "columnWidths"} <= ui_state  # the lists found are these
    assert set(state) <= ui_state | facets, set(state) - ui_state - facets
    bundle = "".join(p.read_text(errors="replace") for p in UI_JS.glob("*.js"))
    assert f'"{mv.SHARE_TAG_PREFIX}"' in bundle and '"viewStateShareKey"' in bundle
    # the grouping's vocabulary: RunGroupingMode.Tag and RunGroupingAggregateFunction.Average
    assert 'e.Tag="tag"' in bundle and 'e.Average="average"' in bundle
    assert f'"{mv.KIND}"' in bundle and 'MACHINE_LEARNING="machine_learning"' in bundle


def test_columns_sort_and_grouping_over_the_non_seed_axes() -> None:
    state = mv.view_state(["model", "optimizer.lr", "seed", "training.seed"])
    assert state["orderByKey"] == "metrics.`best_val_dice`" and state["orderByAsc"] is False
    cols = state["selectedColumns"]
    assert cols[0] == "metrics.`best_val_dice`"
    for key in ("model", "optimizer.lr", "seed", "training.seed"):
        assert f"tags.`axis.{key}`" in cols
    assert "tags.`runner.state`" in cols and "metrics.`test_dice`" in cols
    assert state["groupBy"] == {
        "aggregateFunction": "average",
        "groupByKeys": [
            {"mode": "tag", "groupByData": "axis.model"},
            {"mode": "tag", "groupByData": "axis.optimizer.lr"},
        ],
    }
    # widths only apply to ordered columns: every width has its place in the order
    assert set(state["columnWidths"]) <= set(state["columnOrder"])
    assert mv.view_state(["seed"])["groupBy"] is None  # seeds only: nothing to group


def test_a_matrixs_own_metrics_come_first_and_sort_the_view(store: tuple[str, Path]) -> None:
    """The MedSegDiff study's metrics: the group's slice Dice of one sample first (it sorts),
    then the rest of the matrix's, then the runner's; `make ui` (no matrix at hand) keeps
    the ones the stored view leads with."""
    own = ["val_dice_2d_single", "val_dice_2d_ensemble", "val_dice_3d_single", "best_val_dice"]
    state = mv.view_state(["model", "seed"], own)
    cols = state["selectedColumns"]
    assert cols[:4] == [f"metrics.`{m}`" for m in own]
    assert cols[4:7] == ["metrics.`val_dice`", "metrics.`test_dice`", "metrics.`train_loss`"]
    assert state["orderByKey"] == "metrics.`val_dice_2d_single`"
    uri, root = store
    exp = tracking.ensure_experiment(uri, "own-metrics", root / "mlartifacts")
    key = mv.SHARE_TAG_PREFIX + mv.VIEW_KEY
    assert mv.write_view(uri, exp, "own-metrics", ["model", "seed"], own) is None
    first = _tag(uri, exp, key)
    assert mv.write_view(uri, exp, "own-metrics", ["model", "seed"]) is None  # make ui
    assert _tag(uri, exp, key) == first


def test_the_envelope_is_what_the_ui_decodes() -> None:
    value = json.loads(mv.envelope("runner: m", mv.view_state(["model"]), 5, 7))
    # decodeSavedViewEnvelope: string name, number createdAt, string state (JSON text)
    assert value["name"] == "runner: m" and value["createdAt"] == 5 and value["updatedAt"] == 7
    assert json.loads(value["state"]) == mv.view_state(["model"])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A real sqlite store, its tables created once for the tests of this module."""
    root = tmp_path_factory.mktemp("views")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    tracking.ensure_experiment(uri, "warm-up", root / "mlartifacts")
    return uri, root


def _tag(uri: str, exp: str, key: str) -> str | None:
    return tracking.client(uri).get_experiment(exp).tags.get(key)


def test_writing_the_view_is_idempotent_and_keeps_a_chosen_kind(store: tuple[str, Path]) -> None:
    uri, root = store
    exp = tracking.ensure_experiment(uri, "idem", root / "mlartifacts")
    key = mv.SHARE_TAG_PREFIX + mv.VIEW_KEY
    assert mv.write_view(uri, exp, "idem", ["model", "seed"]) is None
    first = _tag(uri, exp, key)
    assert json.loads(json.loads(first)["state"]) == mv.view_state(["model", "seed"])
    assert _tag(uri, exp, mv.KIND_TAG) == "custom_model_development"
    assert mv.write_view(uri, exp, "idem", ["model", "seed"]) is None
    assert _tag(uri, exp, key) == first  # unchanged: not rewritten (updatedAt kept)
    assert mv.write_view(uri, exp, "idem", ["model", "loss", "seed"]) is None
    second = json.loads(_tag(uri, exp, key))
    assert json.loads(second["state"]) == mv.view_state(["model", "loss", "seed"])
    assert second["createdAt"] == json.loads(first)["createdAt"]
    assert second["updatedAt"] >= json.loads(first)["updatedAt"]
    other = tracking.ensure_experiment(uri, "genai-on-purpose", root / "mlartifacts")
    tracking.client(uri).set_experiment_tag(other, mv.KIND_TAG, "genai_development")
    assert mv.write_view(uri, other, "genai-on-purpose", ["model"]) is None
    assert _tag(uri, other, mv.KIND_TAG) == "genai_development"


def test_a_store_that_refuses_costs_a_warning_not_the_sweep(store: tuple[str, Path]) -> None:
    uri, _ = store
    down = f"http://127.0.0.1:{free_port()}"
    warning = mv.write_view(down, "1", "m", ["model"])
    assert warning is not None and "could not save the MLflow UI view of 'm'" in warning
    assert down in warning and "does not answer" in warning
    missing = mv.write_view(uri, "987654", "m", ["model"])
    assert missing is not None and "987654" in missing


def test_what_a_sweep_prints(tmp_path: Path) -> None:
    link = "/#/experiments/3/runs?viewStateShareKey=runner&workflowType=machine_learning"
    default = mv.ui_lines(mv.default_store(), "3")
    assert default[0].startswith("open the UI with: make ui   (or: mlflow ui --backend-store")
    assert default[1].endswith("http://127.0.0.1:5000" + link)
    other = f"sqlite:///{tmp_path / 'x.db'}"
    lines = mv.ui_lines(other, "3")
    assert lines[0] == f"open the UI with: mlflow ui --backend-store-uri {other} " + (
        "--host 127.0.0.1 --port 5000"
    )
    assert "make ui" not in "\n".join(lines)
    assert mv.ui_lines("http://tracking:5000/", "3") == [
        "the matrix's runs, grouped over seeds: http://tracking:5000" + link
    ]
    unsaved = mv.ui_lines(other, "3", view=False)[1]
    assert "viewStateShareKey" not in unsaved and "workflowType=machine_learning" in unsaved
    assert mv.ui_lines("databricks", "3") == []
    assert len(mv.ui_lines(other, None)) == 1  # no experiment yet: no link


def test_publish_links_the_view_once_the_experiment_exists(
    store: tuple[str, Path], tmp_path: Path
) -> None:
    uri, root = store
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: published\nrecipe: segmentation\nbase: [data=demo]\n"
        "axes:\n  model: [unet, segresnet]\n  seed: [0, 1]\n"
        f"tracking: {{uri: '{uri}'}}\n"
    )
    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text(path.read_text().replace(uri, f"sqlite:///{tmp_path / 'none.db'}"))
    assert mv.publish(make_plan(nowhere, tmp_path))[1] == []
    assert not (tmp_path / "none.db").exists()  # looking creates no store
    plan = make_plan(path, tmp_path)
    lines, warnings = mv.publish(plan)
    assert warnings == [] and len(lines) == 1  # never swept: no experiment, no link
    assert tracking.client(uri).get_experiment_by_name("published") is None
    exp = tracking.ensure_experiment(uri, "published", root / "mlartifacts")
    lines, warnings = mv.publish(plan)
    assert warnings == [] and lines[1].endswith(mv.deep_link("http://127.0.0.1:5000", exp))
    view = json.loads(_tag(uri, exp, mv.SHARE_TAG_PREFIX + mv.VIEW_KEY))
    assert json.loads(view["state"]) == mv.view_state(["model", "seed"])


def test_axis_values_are_params_too_logged_once(store: tuple[str, Path]) -> None:
    uri, root = store
    exp = tracking.ensure_experiment(uri, "params", root / "mlartifacts")
    values = {"model": "unet", "optimizer.lr": 0.001, "storage.api_key": "hunter2"}
    tags = tracking.cell_tags("params", "c1", values, "local", None)
    run_id = tracking.start_cell_run(uri, exp, "unet", tags)
    params = tracking.client(uri).get_run(run_id).data.params
    assert params == {
        "axis.model": "unet",
        "axis.optimizer.lr": "0.001",
        "axis.storage.api_key": tags["axis.storage.api_key"],
    }
    assert "hunter2" not in json.dumps(params)
    tracking.reopen_run(uri, run_id, tags)  # a resume
    assert tracking.client(uri).get_run(run_id).data.params == params
    # MLflow refuses to change a param: a value spelled differently since is left alone
    tracking.reopen_run(uri, run_id, {**tags, "axis.optimizer.lr": "1e-3"})
    assert tracking.client(uri).get_run(run_id).data.params == params
    # a run created before axis params existed gets them when it is resumed
    old = tracking.client(uri).create_run(exp, run_name="old", tags=tags).info.run_id
    assert tracking.client(uri).get_run(old).data.params == {}
    tracking.reopen_run(uri, old, tags)
    assert tracking.client(uri).get_run(old).data.params == params


def test_make_ui_writes_and_links_the_view_of_every_swept_matrix(
    store: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, root = store
    sweeps = tmp_path / "sweeps"
    assert mv.main(["--store", uri, "--sweep-dir", str(sweeps)]) == 0
    assert "no matrix swept under" in capsys.readouterr().out
    cell = Cell("c0", {"model": "unet"}, ())
    Ledger(sweeps, "nowhere").cell(cell.id).write_cell(cell, "segmentation", [])
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert mv.main(["--store", absent, "--sweep-dir", str(sweeps)]) == 0
    assert "no MLflow store at" in capsys.readouterr().out
    assert not (tmp_path / "absent.db").exists()  # looking creates no store
    for name in ("swept", "elsewhere"):
        for i, (model, seed) in enumerate([("unet", 0), ("segresnet", 1)]):
            cell = Cell(f"{name}{i}", {"model": model, "seed": seed}, ())
            Ledger(sweeps, name).cell(cell.id).write_cell(cell, "segmentation", [])
    exp = tracking.ensure_experiment(uri, "swept", root / "mlartifacts")
    assert mv.main(["--store", uri, "--sweep-dir", str(sweeps), "--ui", "http://h:7"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"elsewhere: not in {uri} (swept into another store)",
        f"nowhere: not in {uri} (swept into another store)",
        f"swept: http://h:7/#/experiments/{exp}/runs?viewStateShareKey=runner"
        "&workflowType=machine_learning",
    ]
    view = json.loads(_tag(uri, exp, mv.SHARE_TAG_PREFIX + mv.VIEW_KEY))
    assert json.loads(view["state"]) == mv.view_state(["model", "seed"])


# --- the real thing: a sweep, a server, a browser -------------------------------------------


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class _Grid(HTMLParser):
    """The runs table as rendered: header column ids, and each row's cell texts by column."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, str] = {}
        self.rows: dict[str, dict[str, str]] = {}
        self._stack: list[tuple[str, str | None, str | None, bool]] = []
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        row = a.get("row-id") if a.get("role") == "row" else None
        cell = a.get("col-id") if a.get("role") in ("gridcell", "columnheader") else None
        header = a.get("role") == "columnheader"
        if tag in VOID:  # never closed
            return
        self._stack.append((tag, row, cell, header))

    def handle_endtag(self, tag: str) -> None:
        if any(t == tag for t, *_ in self._stack):
            while self._stack.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        row = next((r for _, r, _, _ in reversed(self._stack) if r), None)
        hit = next(((c, h) for _, _, c, h in reversed(self._stack) if c), None)
        if hit is None:
            return
        col, header = hit
        if header:
            self.headers[col] = (self.headers.get(col, "") + data).strip()
        elif row is not None:
            cells = self.rows.setdefault(row, {})
            cells[col] = (cells.get(col, "") + " " + data).strip()


def _chromium(args: list[str], work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={work / 'chromium-profile'}",
            "--window-size=2400,1200",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _render(url: str, work: Path, marker: str) -> str:
    """The DOM of ``url`` once the app rendered ``marker`` (a busy machine may need more
    virtual time: the budget grows, the number of tries is bounded)."""
    dom = ""
    for budget in (30_000, 60_000, 120_000):
        dom = _chromium([f"--virtual-time-budget={budget}", "--dump-dom", url], work).stdout
        if marker in dom:
            return dom
    raise AssertionError(f"{marker!r} never rendered at {url}; the DOM ends: {dom[-2000:]}")


def _number(text: str) -> float:
    return float(text.split()[0])


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make test-deps installs Debian's)"
)
def test_the_deep_link_opens_the_view_in_a_real_browser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_tiny_dataset(tmp_path / "demo")
    uri = f"sqlite:///{tmp_path / 'server.db'}"  # the store mlflow_server serves
    path = tmp_path / "m.yaml"
    axes = "  loss: [dice_ce, dice]\n  seed: [0, 1]"
    path.write_text(matrix_text("view", data, axes, "{kind: debug}", uri, ["model=segresnet"]))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(path)]) == 0
    lines, warnings = mv.publish(make_plan(path))
    assert warnings == [] and lines[0].startswith("open the UI with: mlflow ui --backend-store")
    capsys.readouterr()  # the sweep's output
    assert main(["report", str(path), "--format", "json", "-o", str(tmp_path / "report")]) == 0
    report = json.loads(capsys.readouterr().out.split("\nreport files in")[0])
    means = {g["axis.loss"]: g["dice_mean"] for g in report["groups"]}
    assert set(means) == {"dice_ce", "dice"}
    client = tracking.client(uri)
    exp = client.get_experiment_by_name("view").experiment_id
    runs = [r for r in client.search_runs([exp]) if tracking.TAG_CELL in r.data.tags]
    assert len(runs) == 4
    for r in runs:  # the compare view's params: the axis values, as the tags say
        axis = {k: v for k, v in r.data.tags.items() if k.startswith("axis.")}
        assert {k: v for k, v in r.data.params.items() if k.startswith("axis.")} == axis

    with mlflow_server(tmp_path) as server:
        url = mv.deep_link(server, exp)
        assert lines[1].endswith(url.removeprefix(server))
        dom = _render(url, tmp_path, 'row-id="tag.axis.loss.dice_ce"')
        grid = _Grid()
        grid.feed(dom)
        for col in ("metrics.`best_val_dice`", "tags.`axis.loss`", "tags.`axis.seed`"):
            assert col in grid.headers, sorted(grid.headers)
        assert grid.headers["metrics.`best_val_dice`"] == "best_val_dice"
        assert grid.headers["tags.`runner.state`"] == "runner.state"
        assert "Group by: axis.loss" in dom and "runner: view" in dom
        for loss, mean in means.items():  # the group rows: means over the seeds
            shown = grid.rows[f"tag.axis.loss.{loss}"]["metrics.`best_val_dice`"]
            assert "(average)" in shown
            assert abs(_number(shown) - mean) <= 5e-4 + 1e-12, (loss, shown, mean)
        for r in runs:  # and each run under its group, with its state
            row = grid.rows[f"tag.axis.loss.{r.data.tags['axis.loss']}.{r.info.run_id}"]
            best = r.data.metrics["best_val_dice"]
            assert _number(row["metrics.`best_val_dice`"]) == pytest.approx(best, abs=5e-4)
            assert row["tags.`runner.state`"] == "done"
        # the compare view lists the axes among the params
        ids, exps = json.dumps([r.info.run_id for r in runs]), json.dumps([exp])
        compare_url = f"{server}/#/compare-runs?runs={quote(ids)}&experiments={quote(exps)}"
        compare = _render(compare_url, tmp_path, "axis.loss")
        assert "Show diff only" in compare and "axis.seed" in compare
        shot = tmp_path / "view.png"
        done = _chromium(["--virtual-time-budget=30000", f"--screenshot={shot}", url], tmp_path)
        assert shot.is_file(), done.stderr[-2000:]
    _assert_real_picture(shot, (2400, 1200))


def _assert_real_picture(png: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size == size
        colors = im.convert("RGB").getcolors(maxcolors=size[0] * size[1])
    assert colors is not None
    commonest = max(n for n, _ in colors)
    # a blank or single-colour page would be one colour; a rendered table has text and lines
    assert len(colors) > 50 and commonest < 0.97 * size[0] * size[1]
