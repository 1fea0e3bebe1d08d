"""``runner evaluate MATRIX``: score done cells on the matrix's test split (``data.test``).

For each chosen cell: its recipe predicts the test cases with the cell's checkpoint, the
recipe's ``EVALUATE`` scores them (nnU-Net's ``summary.json``), the cell's own MLflow run gets
``test_*`` metrics (``test_dice`` is the foreground mean Dice, ``test_dice_<class>`` per
class, ``test_iou``, ``test_hd95``, ``test_surface_dice``, ``test_cases``; an instance task
adds ``test_adapted_rand_error``, ``test_voi``, ``test_voi_split``, ``test_voi_merge``...) and
the artifact ``test/summary.json``, and the ledger keeps ``cells/<id>/test/`` (predictions
and summary). EM stacks are scored inside their masks, at ``data.voxel_size``.

Every cell is checked before any is predicted: its checkpoint exists, its test cases are
listed and readable, and none of them is in the train or validation side of the split the
cell logged (``split.json``): a test case a cell trained on, or was selected on, would make
its test figures optimistic, so that is an error. A cell's previous results are replaced
only once its new ones are complete and logged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.contract import EvaluateRequest, PredictInputError, PredictRequest
from runner import tracking
from runner.errors import RunnerError
from runner.plan import Plan
from runner.testtime.select import Member, recipe_entry

#: summary.json keys -> the MLflow metric suffix they are logged under.
LOGGED = {"Dice": "dice", "IoU": "iou", "HD95": "hd95", "NSD": "surface_dice"}
#: an instance summary's foreground_mean keys, logged as test_<key>
INSTANCE_KEYS = (
    "adapted_rand_error",
    "adapted_rand_precision",
    "adapted_rand_recall",
    "voi_split",
    "voi_merge",
    "voi",
)


@dataclass
class CellOutcome:
    member: Member
    summary: dict[str, Any]
    metrics: dict[str, float]
    folder: Path


def test_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a summary (NaN ones left out: MLflow has no use for them).
    ``test_dice`` is the mean over the classes with a case to score, as ``val_dice`` is."""
    overall = summary.get("over_classes") or summary["foreground_mean"]
    out = {f"test_{name}": overall[key] for key, name in LOGGED.items()}
    labels = summary.get("labels", {})
    for value, row in summary["mean"].items():
        out[f"test_dice_{labels.get(value, value)}"] = row["Dice"]
    out["test_cases"] = float(summary["n_cases"])
    for key in INSTANCE_KEYS:
        if key in summary["foreground_mean"]:
            out[f"test_{key}"] = summary["foreground_mean"][key]
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def _split_cases(plan: Plan, run_id: str | None) -> tuple[set[str], bool]:
    """The train + validation case ids a cell logged (split.json), and whether it had one."""
    if not run_id:
        return set(), False
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = tracking.client(plan.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "split.json", tmp)
            split = json.loads(Path(path).read_text())
        except Exception:  # no such artifact (older runs), or the store is unreachable
            return set(), False
    return set(split.get("train", [])) | set(split.get("val", [])), True


def _pre_check(plan: Plan, chosen: list[Member], say: Any) -> dict[str, list[str]]:
    """Each cell's test cases, after checking inputs and the split (module doc)."""
    predict = recipe_entry(plan.recipe.name, "PREDICT")
    states = plan.states()
    cases: dict[str, list[str]] = {}
    for m in chosen:
        request = PredictRequest(
            [m.ref], Path(tempfile.gettempdir()), split="test", check_only=True
        )
        try:
            listed = predict(request)
        except PredictInputError as err:
            raise RunnerError(f"cell {m.cell.id} ({m.cell.run_name}): {err}") from None
        ids = [c.case for c in listed.cases]
        seen, known = _split_cases(plan, states[m.cell.id].run_id)
        leaked = sorted(seen & set(ids))
        if leaked:
            raise RunnerError(
                f"cell {m.cell.id} ({m.cell.run_name}) trained or validated on test cases "
                f"{', '.join(leaked[:5])}{' ...' if len(leaked) > 5 else ''} (its split.json), "
                "so its test figures would be optimistic: it trained before data.test held "
                "them out; retrain it"
            )
        if not known:
            say(f"warning: cell {m.cell.run_name} logged no split.json: overlap not checked")
        cases[m.cell.id] = ids
    return cases


def evaluate_cells(
    plan: Plan, chosen: list[Member], *, tta: bool, which: str, say: Any
) -> list[CellOutcome]:
    if not chosen:
        raise RunnerError(f"no done cell in {plan.matrix.file} to evaluate")
    _pre_check(plan, chosen, say)
    predict = recipe_entry(plan.recipe.name, "PREDICT")
    evaluate = recipe_entry(plan.recipe.name, "EVALUATE")
    states = plan.states()
    outcomes = []
    for m in chosen:
        record = plan.ledger.cell(m.cell.id)
        stage = record.dir / f".test.partial-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            say(f"{m.cell.run_name}: predicting the test cases ({which}.pt)")
            request = PredictRequest([m.ref], stage / "predictions", split="test", tta=tta)
            result = predict(request)
            summary = evaluate(_scoring(m, result))
            summary["cell"] = {
                "id": m.cell.id,
                "run_name": m.cell.run_name,
                "checkpoint": str(m.ref.checkpoint),
                "tta": tta,
                "settings": result.settings,
                "time": time.time(),
            }
            final = record.dir / "test"
            for case in summary["metric_per_case"]:  # where the files will be after the swap
                name = Path(case["prediction_file"]).name
                case["prediction_file"] = str(final / "predictions" / name)
            (stage / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            metrics = test_metrics(summary)
            _log(plan, states[m.cell.id].run_id, metrics, stage / "summary.json", which, tta)
            _swap(stage, final)
        except PredictInputError as err:
            raise RunnerError(f"cell {m.cell.id} ({m.cell.run_name}): {err}") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        outcomes.append(CellOutcome(m, summary, metrics, final))
    return outcomes


def _scoring(m: Member, result: Any) -> EvaluateRequest:
    """What scores a cell's test predictions: its classes, masks, voxel size and task."""
    cfg = m.ref.config
    pairs = [(c.case, c.prediction, c.label) for c in result.cases]
    masks = {c.case: c.mask for c in result.cases if getattr(c, "mask", None) is not None}
    instances = (cfg.get("task") or {}).get("name") == "em_instance"
    voxel = cfg.data.get("voxel_size")
    return EvaluateRequest(
        pairs=pairs,
        labels=dict(enumerate(result.class_names)),
        tolerance_mm=float(cfg.training.get("metrics", {}).get("surface_tolerance_mm", 2.0)),
        masks=masks,
        instances=instances,
        binary_reference=bool(cfg.data.get("instance_labels")) and not instances,
        dataset_key=cfg.data.get("dataset_key", "main"),
        voxel_size=tuple(float(v) for v in voxel) if voxel else None,  # type: ignore[arg-type]
    )


def _log(
    plan: Plan, run_id: str | None, metrics: dict[str, float], summary: Path, which: str, tta: bool
) -> None:
    """Into the cell's own run: metrics at step 0, tags, and the summary as an artifact."""
    if not run_id:
        raise RunnerError("the cell has no MLflow run to log its test metrics into")
    from mlflow.entities import Metric, RunTag

    client = tracking.client(plan.tracking_uri)
    now = int(time.time() * 1000)
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            tags=[
                RunTag("runner.test.checkpoint", which),
                RunTag("runner.test.tta", str(tta).lower()),
            ],
        )
        client.log_artifact(run_id, str(summary), artifact_path="test")
    except Exception as exc:  # MLflow and OS errors alike: nothing local is replaced
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RunnerError(f"cannot log test metrics into run {run_id}: {first}") from None


def _swap(stage: Path, final: Path) -> None:
    """Replace ``final`` by ``stage`` with renames (the old one goes only once the new is in)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)
