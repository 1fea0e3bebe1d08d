"""Predict label maps with trained segmentation models: one, or an ensemble of several.

``predict(request)`` (the recipe's ``PREDICT`` entry, a :class:`recipes.contract.PredictFn`)
reads nnU-Net-named inputs (``CASE_0000.nii.gz``, ... one file per channel of the training
dataset; see :mod:`recipes.components.testtime.inputs`) or the ``data.test`` cases, checks
them all before loading a model, and writes ``CASE.nii.gz`` label maps on each input's own
grid (same shape, affine and orientation as the input file: the training spacing and RAS
orientation are undone), and with ``save_probabilities`` ``CASE.npz`` holding
``probabilities`` (C, X, Y, Z: the input's voxel order) and ``classes``. Models of the
``h5`` / ``tiff`` layouts read and write EM stacks instead (``CASE_pred.h5`` / ``.tif``;
:mod:`recipes.components.testtime.stack_cases`). ``task=em_instance``: the label map holds
instance ids, the seeded watershed of the three head maps (``training/instances.py``).
Several models are an ensemble: their probabilities (softmax, or em_instance's head maps)
are averaged before the argmax or the watershed, whatever their architectures. The settings
(``predict.*``: sliding window, TTA, autocast, device) are documented in
:mod:`recipes.components.testtime.inference`. Files appear in the output folder only once
every case has been predicted, with ``predict.json`` saying what made them.

Standalone::

    python -m recipes.segmentation.predict -i imagesTs -o preds -c run/checkpoints/best.pt \\
        model=unet data=demo [predict.sw_overlap=0.75] [--tta] [--save-probabilities]

(``--config run/config.yaml``, a run's logged config, instead of composing ``conf/``.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recipes.components.testtime.held_out import held_out_items
from recipes.components.testtime.inference import (
    Predictor,
    ensemble_probabilities,
    resolve_device,
    resolve_settings,
)
from recipes.components.testtime.inputs import (
    ChannelMap,
    channel_map,
    check_headers,
    read_input_folder,
)
from recipes.components.testtime.stack_cases import (
    check_stacks,
    folder_items,
    is_stack_layout,
    output_name,
    write_stack,
    xyz_to_zyx,
)
from recipes.components.training.instances import decode_instances
from recipes.components.training.validation import task_of
from recipes.contract import (
    ModelRef,
    PredictedCase,
    PredictInputError,
    PredictRequest,
    PredictResult,
)


def _task(request: PredictRequest) -> str:
    """The members' task: an ensemble averages maps of one kind only."""
    tasks = {m.name or str(m.checkpoint): task_of(m.config) for m in request.models}
    if len(set(tasks.values())) > 1:
        listed = ", ".join(f"{name}: {task}" for name, task in tasks.items())
        raise PredictInputError(f"ensemble members have different tasks ({listed})")
    return next(iter(tasks.values()))


def _channels(request: PredictRequest) -> ChannelMap:
    cmaps = [channel_map(m.config.data) for m in request.models]
    for model, cmap in zip(request.models[1:], cmaps[1:], strict=True):
        if (cmap.names, cmap.classes) != (cmaps[0].names, cmaps[0].classes):
            raise PredictInputError(
                f"ensemble members disagree: {request.models[0].name} reads {cmaps[0].names} "
                f"into {cmaps[0].classes}, {model.name} reads {cmap.names} into {cmap.classes}"
            )
    return cmaps[0]


def _cases(request: PredictRequest, cmap: ChannelMap) -> list[dict[str, Any]]:
    data_cfg = request.models[0].config.data
    if request.input_dir is not None:
        if is_stack_layout(data_cfg):
            return folder_items(request.input_dir, data_cfg)
        return read_input_folder(request.input_dir, cmap)
    if request.split != "test":
        raise PredictInputError("predict needs an input folder or split='test'")
    if is_stack_layout(data_cfg):
        items = held_out_items(data_cfg)
        check_stacks(items, data_cfg)
        return items
    items = []
    for item in held_out_items(data_cfg):
        image = item["image"]
        if isinstance(image, list):  # every dataset channel: keep the model's, in its order
            image = [image[i] for i in cmap.fed]
        items.append({**item, "image": image})
    check_headers(items, cmap)
    return items


def _label_map(probs: np.ndarray, cfg: DictConfig, task: str) -> np.ndarray:
    """The argmax of the probabilities, or em_instance's watershed instances (int32)."""
    if task == "em_instance":
        return decode_instances(probs, cfg.task.get("watershed"))
    return probs.argmax(0).astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


def _save_label(labels: np.ndarray, source: str, path: Path) -> None:
    """``labels`` on the grid of ``source`` (its affine, qform and sform codes, units)."""
    import nibabel as nib

    ref = nib.load(source)
    if tuple(labels.shape) != tuple(ref.shape[:3]):
        raise RuntimeError(f"prediction {labels.shape} is not on the grid {ref.shape[:3]}")
    img = nib.Nifti1Image(labels, ref.affine)
    header = ref.header
    img.set_qform(ref.affine, int(header.get("qform_code", 1)) or 1)
    img.set_sform(ref.affine, int(header.get("sform_code", 1)) or 1)
    if hasattr(header, "get_xyzt_units"):
        img.header.set_xyzt_units(*header.get_xyzt_units())
    nib.save(img, path)


def predict(
    request: PredictRequest,
    make_predictor: Callable[..., Any] = Predictor,
    settings_of: Callable[..., dict[str, Any]] = resolve_settings,
) -> PredictResult:
    """Predict every case of ``request`` (module doc); ``check_only``: list and check only.

    ``make_predictor(ref, cmap, settings, device)`` and ``settings_of(cfg, overrides)``: how
    a model becomes probabilities (another recipe's, e.g. the diffusion recipe's sampler)."""
    if not request.models:
        raise PredictInputError("predict needs at least one model")
    task = _task(request)
    cmap = _channels(request)
    stacks = is_stack_layout(request.models[0].config.data)
    settings = settings_of(request.models[0].config, request.settings)
    settings["tta"] = bool(settings["tta"] or request.tta)
    items = _cases(request, cmap)
    out = request.output_dir
    if request.check_only:
        cases = [PredictedCase(i["case"], None, _label(i), mask=_mask(i)) for i in items]
        return PredictResult(cases, cmap.classes, cmap.names, settings)
    for ref in request.models:
        if not ref.checkpoint.is_file():
            raise PredictInputError(f"{ref.name or 'model'}: checkpoint {ref.checkpoint} not found")
    device = resolve_device(str(settings["device"]))
    predictors = [make_predictor(ref, cmap, settings, device) for ref in request.models]
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".partial-{os.getpid()}"
    stage.mkdir(exist_ok=True)
    written: list[tuple[dict[str, Any], str, str | None]] = []
    cfg = request.models[0].config
    try:
        for item in _progress(items, request.progress, len(predictors)):
            probs = ensemble_probabilities(predictors, item)
            labels = _label_map(probs, cfg, task)
            first = item["image"][0] if isinstance(item["image"], list) else item["image"]
            if stacks:
                name, probs_name = output_name(first), output_name(first, "probabilities")
                write_stack(stage / name, xyz_to_zyx(labels))
                if request.save_probabilities:
                    write_stack(stage / probs_name, xyz_to_zyx(probs.astype(np.float32)))
            else:
                name, probs_name = f"{item['case']}.nii.gz", f"{item['case']}.npz"
                _save_label(labels, first, stage / name)
                if request.save_probabilities:
                    np.savez_compressed(
                        stage / probs_name,
                        probabilities=probs.astype(np.float32),
                        classes=np.asarray(cmap.classes),
                    )
            written.append((item, name, probs_name if request.save_probabilities else None))
        # Only now, all cases done, do the files replace anything in the output folder.
        results = []
        for item, name, probs_name in written:
            os.replace(stage / name, out / name)
            probs_path = None
            if probs_name is not None:
                probs_path = out / probs_name
                os.replace(stage / probs_name, probs_path)
            results.append(
                PredictedCase(item["case"], out / name, _label(item), probs_path, _mask(item))
            )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result = PredictResult(results, cmap.classes, cmap.names, settings)
    _provenance(request, result, cmap)
    return result


def _label(item: dict[str, Any]) -> Path | None:
    return Path(item["label"]) if item.get("label") else None


def _mask(item: dict[str, Any]) -> Path | None:
    return Path(item["mask"]) if item.get("mask") else None


def _progress(items: list[dict[str, Any]], show: bool, members: int) -> Any:
    """A progress bar on stderr (tqdm, when installed and stderr is a terminal)."""
    if not show:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    what = "predict" if members == 1 else f"predict (ensemble of {members})"
    return tqdm(items, desc=what, unit="case", disable=None, file=sys.stderr)


def _provenance(request: PredictRequest, result: PredictResult, cmap: ChannelMap) -> None:
    """``predict.json``: which models, checkpoints, settings and channels made the files."""
    record = {
        "models": [{"name": m.name, "checkpoint": str(m.checkpoint)} for m in request.models],
        "ensemble": len(request.models) > 1,
        "input": str(request.input_dir) if request.input_dir else request.split,
        "channels": {f"{i:04d}": cmap.dataset[i] for i in cmap.fed},
        "classes": {str(i): name for i, name in enumerate(cmap.classes)},
        "settings": result.settings,
        "cases": [c.case for c in result.cases],
    }
    path = request.output_dir / "predict.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _compose(args: argparse.Namespace, overrides: list[str]) -> DictConfig:
    if args.config is not None:
        try:
            cfg = OmegaConf.load(args.config)
        except OSError as err:
            raise PredictInputError(f"--config {args.config}: {err}") from None
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))  # type: ignore[return-value]
    from hydra import compose, initialize_config_dir

    from recipes.segmentation import CONFIG_DIR, CONFIG_NAME

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="predict"):
        return compose(CONFIG_NAME, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.segmentation.predict",
        description="Predict nnU-Net-named inputs with trained segmentation models.",
    )
    parser.add_argument("-i", "--input", type=Path, required=True, help="CASE_0000.nii.gz, ...")
    parser.add_argument("-o", "--output", type=Path, required=True, help="CASE.nii.gz land here")
    parser.add_argument(
        "-c", "--checkpoint", type=Path, action="append", required=True,
        help="a best.pt or last.pt; repeat it to ensemble (probabilities averaged)",
    )  # fmt: skip
    parser.add_argument("--config", type=Path, help="a run's config.yaml instead of conf/")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    parser.add_argument("--save-probabilities", action="store_true", help="also CASE.npz")
    parser.add_argument("overrides", nargs="*", help="config overrides and predict.* keys")
    args = parser.parse_args(argv)
    settings = dict(o.split("=", 1) for o in args.overrides if o.startswith("predict."))
    rest = [o for o in args.overrides if not o.startswith("predict.")]
    try:
        try:
            cfg = _compose(args, rest)
        except PredictInputError:
            raise
        except Exception as err:  # Hydra's and OmegaConf's errors: a bad override
            raise PredictInputError(f"cannot compose the config: {err}") from None
        request = PredictRequest(
            models=[ModelRef(cfg, c, c.parent.parent.name or c.stem) for c in args.checkpoint],
            output_dir=args.output,
            input_dir=args.input,
            tta=args.tta,
            save_probabilities=args.save_probabilities,
            settings=settings,
        )
        result = predict(request)
    except PredictInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(result.cases)} label maps to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
