"""A saved MLflow UI view per matrix, and the deep link that opens it.

MLflow 3.17 opens an experiment in its GenAI mode and, in "Model training" mode, shows
Created/Dataset/Duration/Source/Models with the Dice and the axis values hidden among a
hundred columns. The UI restores a *saved view* from an experiment tag
``mlflow.sharedViewState.<key>`` when the page is opened with ``?viewStateShareKey=<key>``
(``useSharedExperimentViewState`` in MLflow's ``server/js``). The tag's value is the envelope
of ``savedViewEnvelope.ts``: ``{"name", "createdAt", "updatedAt", "state"}``, where ``state``
is the JSON text (deflate-compressed or plain; plain here) of the page's search facets
(``ExperimentPageSearchFacetsState``: ``orderByKey``, ``orderByAsc``, ...) and UI state
(``ExperimentPageUIState``: ``selectedColumns`` as canonical keys ``metrics.`best_val_dice```,
``groupBy`` as ``{"aggregateFunction", "groupByKeys": [{"mode": "tag", "groupByData"}]}``).

The view this writes: the main metrics, the ``axis.*`` tags and the runner state as columns,
sorted by best val Dice, grouped by the non-seed axes with the average over the seeds (the
group means of ``runner report``). A matrix's ``metrics:`` come first, and the first of them
sorts the view (the MedSegDiff study leads with the group's own ``val_dice_2d_single``). The
UI picks "Model training" from the link's ``workflowType=machine_learning``; older 3.x UIs
read the experiment tag ``mlflow.experimentKind``, set too.

``python -m runner.report.mlflow_view`` (``make ui``) writes the view of every matrix of a
sweep directory into a store and prints the links.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import tracking

if TYPE_CHECKING:
    from runner.plan import Plan

VIEW_KEY = "runner"
SHARE_TAG_PREFIX = "mlflow.sharedViewState."
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
#: Validation (the selection metric first), test (``runner evaluate``), training.
METRICS = ("best_val_dice", "val_dice", "test_dice", "train_loss")
UI_HOST, UI_PORT = "127.0.0.1", 5000
#: The store ``make ui`` serves: the repository's default sqlite file.
REPO = Path(__file__).resolve().parents[2]


def is_seed_axis(key: str) -> bool:
    """An axis that only repeats a configuration (``seed``, ``training.seed``): averaged over."""
    return key == "seed" or key.endswith(".seed")


def column(kind: str, key: str) -> str:
    """The UI's canonical column key (``makeCanonicalSortKey``): ``metrics.`best_val_dice```."""
    return f"{kind}.`{key}`"


def view_state(axes: Sequence[str], metrics: Sequence[str] = ()) -> dict[str, Any]:
    """The page state of the view for a matrix with these axes (in axis order); its own
    ``metrics`` first."""
    shown = list(dict.fromkeys([*metrics, *METRICS]))
    tags = [f"{tracking.AXIS_PREFIX}{a}" for a in axes]
    groups = [t for a, t in zip(axes, tags, strict=True) if not is_seed_axis(a)]
    group_by = (
        {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": t} for t in groups],
        }
        if groups
        else None
    )
    name = column("attributes", "Run Name")
    columns = [
        *(column("metrics", m) for m in shown),
        *(column("tags", t) for t in tags),
        column("tags", tracking.TAG_STATE),
    ]
    return {
        # search facets
        "searchFilter": "",
        "orderByKey": column("metrics", shown[0]),
        "orderByAsc": False,
        # UI state
        "selectedColumns": columns,
        # The UI applies widths only to the columns it is given an order for; the name column
        # gets room for the group labels ("Group: axis.model: unet, axis.loss: dice_ce").
        "columnOrder": [name, *columns],
        "columnWidths": {name: 300, **{c: 120 for c in columns}},
        "groupBy": group_by,
        "groupsExpanded": {},
        # Charts compare every group, not only the first ten rows.
        "runsHiddenMode": "SHOW_ALL",
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "viewMaximized": False,
        "runListHidden": False,
    }


def envelope(name: str, state: dict[str, Any], created: int, updated: int) -> str:
    return json.dumps(
        {"name": name, "createdAt": created, "updatedAt": updated, "state": json.dumps(state)}
    )


def _stored_state(value: str | None) -> tuple[dict[str, Any] | None, int | None]:
    """The state and creation time of a view written before, (None, None) if unreadable."""
    try:
        env = json.loads(value or "")
        return json.loads(env["state"]), int(env["createdAt"])
    except (ValueError, KeyError, TypeError):
        return None, None


def _leading_metrics(state: dict[str, Any] | None) -> list[str]:
    """The matrix's own metrics a stored view leads with (its columns before METRICS')."""
    out = []
    for col in (state or {}).get("selectedColumns", []):
        name = str(col).removeprefix("metrics.`").removesuffix("`")
        if not str(col).startswith("metrics.`") or name in METRICS:
            break
        out.append(name)
    return out


def write_view(
    uri: str,
    experiment_id: str,
    matrix: str,
    axes: Sequence[str],
    metrics: Sequence[str] | None = None,
) -> str | None:
    """Write (or refresh) the matrix's view and the experiment kind; a warning, or None.
    ``metrics``: the matrix's own (None: those the stored view leads with, for ``make ui``,
    which reads the sweep directory, not the matrix).

    Idempotent: an unchanged view is not written again. Never raises: a store that refuses
    costs the view, not the sweep."""
    try:
        tracking.check_reachable(uri, timeout_s=3.0)
        c = tracking.client(uri)
        tags = c.get_experiment(experiment_id).tags
        key = SHARE_TAG_PREFIX + VIEW_KEY
        old, created = _stored_state(tags.get(key))
        state = view_state(axes, _leading_metrics(old) if metrics is None else metrics)
        if old != state:
            now = int(time.time() * 1000)
            value = envelope(f"runner: {matrix}", state, created or now, now)
            c.set_experiment_tag(experiment_id, key, value)
        if not tags.get(KIND_TAG):  # a kind the user chose stays
            c.set_experiment_tag(experiment_id, KIND_TAG, KIND)
    except Exception as exc:  # MLflow, SQLAlchemy, HTTP and OS errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return f"could not save the MLflow UI view of '{matrix}' in {uri}: {first}"
    return None


def axes_of(values: Iterable[dict[str, Any]]) -> list[str]:
    """Every key the cells set, in first-seen order (the cells' ``axis.*`` tags)."""
    return list(dict.fromkeys(k for v in values for k in v))


def deep_link(ui_url: str, experiment_id: str, view: bool = True) -> str:
    """The runs page of the experiment in "Model training" mode, with the view if written."""
    query = f"viewStateShareKey={VIEW_KEY}&" if view else ""
    page = f"#/experiments/{experiment_id}/runs"
    return f"{ui_url.rstrip('/')}/{page}?{query}workflowType=machine_learning"


def default_store() -> str:
    return f"sqlite:///{REPO / 'mlruns.db'}"


def ui_command(uri: str, port: int = UI_PORT) -> str:
    return f"mlflow ui --backend-store-uri {uri} --host {UI_HOST} --port {port}"


def ui_lines(uri: str, experiment_id: str | None, view: bool = True) -> list[str]:
    """What to print after a sweep: how to open the UI, and the link to the matrix's view."""
    if uri.startswith(("http://", "https://")):
        lines, ui = [], uri
    elif uri.startswith(("sqlite:", "file:")):
        # `make ui` serves the repository's default store only; say it only when it is this one.
        cmd = ui_command(uri)
        how = f"make ui   (or: {cmd})" if uri == default_store() else cmd
        lines = [f"open the UI with: {how}"]
        ui = f"http://{UI_HOST}:{UI_PORT}"
    else:
        return []  # a hosted store (databricks, ...): its own UI, its own address
    if experiment_id is not None:
        lines.append(f"the matrix's runs, grouped over seeds: {deep_link(ui, experiment_id, view)}")
    return lines


def _no_store(uri: str) -> bool:
    """A local sqlite store that does not exist yet (opening it would create it)."""
    db = uri.removeprefix("sqlite:///")
    return db != uri and not Path(db).is_file()


def publish(plan: Plan, experiment_id: str | None = None) -> tuple[list[str], list[str]]:
    """Write the plan's view (looking the experiment up when not given); the lines to print
    and the warnings. For the end of ``sweep``/``resume``."""
    spec, uri = plan.matrix.spec, plan.tracking_uri
    if experiment_id is None:
        if _no_store(uri):
            return ui_lines(uri, None), []
        try:
            tracking.check_reachable(uri, timeout_s=3.0)
            found = tracking.client(uri).get_experiment_by_name(spec.name)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            return ui_lines(uri, None), [f"cannot read the MLflow store {uri}: {first}"]
        if found is None:  # nothing ever ran: no experiment yet
            return ui_lines(uri, None), []
        experiment_id = found.experiment_id
    axes = axes_of(c.values for c in plan.cells)
    warning = write_view(uri, experiment_id, spec.name, axes, spec.metrics)
    return ui_lines(uri, experiment_id, view=warning is None), [warning] if warning else []


def swept(sweep_dir: Path) -> dict[str, list[str]]:
    """Each matrix of a sweep directory with the axes its cells record (``cell.json``)."""
    out: dict[str, list[str]] = {}
    for cells in sorted(sweep_dir.glob("*/cells")):
        values = []
        for f in sorted(cells.glob("*/cell.json")):
            try:
                values.append(json.loads(f.read_text()).get("values", {}))
            except (OSError, ValueError):
                continue  # a cell being written: the others tell the axes
        out[cells.parent.name] = axes_of(values)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``make ui``: write the view of every swept matrix found in the store; print the links."""
    p = argparse.ArgumentParser(
        prog="python -m runner.report.mlflow_view", description=main.__doc__
    )
    p.add_argument("--store", default=default_store(), help="tracking URI (default: %(default)s)")
    p.add_argument("--sweep-dir", type=Path, default=Path("sweeps"))
    p.add_argument("--ui", default=f"http://{UI_HOST}:{UI_PORT}", help="where the UI will be")
    args = p.parse_args(argv)
    matrices = swept(args.sweep_dir)
    if not matrices:
        print(f"no matrix swept under {args.sweep_dir}/ yet: the UI lists every experiment")
        return 0
    if _no_store(args.store):
        print(f"no MLflow store at {args.store} yet: {args.sweep_dir}/ was swept elsewhere")
        return 0
    try:
        c = tracking.client(args.store)
        found = {m: c.get_experiment_by_name(m) for m in matrices}
    except Exception as exc:
        print(f"warning: cannot read the MLflow store {args.store}: {exc}", file=sys.stderr)
        return 0  # the UI still starts and shows whatever it can
    for name, axes in matrices.items():
        exp = found[name]
        if exp is None:
            print(f"{name}: not in {args.store} (swept into another store)")
            continue
        warning = write_view(args.store, exp.experiment_id, name, axes)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{name}: {deep_link(args.ui, exp.experiment_id, view=warning is None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
