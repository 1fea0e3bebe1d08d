"""What ``evaluate`` scores: predictions paired with references (and masks), read as arrays.

Pairs come from folders (nnU-Net's rule: every reference ``CASE<ending>`` needs a prediction
of the same name; extra predictions are ignored), from glob patterns (EM stacks, whose
predictions and labels are named differently: ``preds/vol*_im_pred.h5`` pairs with
``test/vol*_vesicle_ins.h5`` by what the wildcards match, as ``data.image`` / ``data.label``
do), or are given. NIfTI files are read with nibabel (spacing from the header, mm); HDF5 and
TIFF files as stacks, ``(z, y, x)`` as stored, with ``voxel_size`` (z, y, x in nm) as their
spacing in mm, or 1 per voxel when it is not known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recipes.components.data.stacks import case_name, find_files
from recipes.components.testtime.stack_cases import STACK_SUFFIXES, is_stack_file, read_stack
from recipes.contract import EvaluateRequest, PredictInputError

NM_PER_MM = 1.0e6


@dataclass
class Pair:
    case: str
    prediction: Path
    reference: Path
    mask: Path | None = None


def _is_pattern(path: Path | str | None) -> bool:
    return path is not None and any(c in str(path) for c in "*?[")


def pairs_of(request: EvaluateRequest, ending: str) -> list[Pair]:
    """The request's pairs (module doc), every reference with its prediction."""
    masks = dict(request.masks or {})
    if request.pairs is not None:
        return [Pair(c, Path(p), Path(r), masks.get(c)) for c, p, r in request.pairs]
    pred, labels = request.pred_dir, request.labels_dir
    if pred is None or labels is None:
        raise PredictInputError("evaluate needs --pred and --labels folders (or glob patterns)")
    if _is_pattern(pred) or _is_pattern(labels) or request.mask_pattern:
        return _pair_patterns(str(pred), str(labels), request.mask_pattern)
    return [Pair(c, p, r) for c, p, r in _pair_folders(pred, labels, ending)]


def _pair_patterns(pred: str, labels: str, mask: str | None) -> list[Pair]:
    for flag, pattern in (("--pred", pred), ("--labels", labels), ("--mask", mask)):
        if pattern is not None and not _is_pattern(pattern):
            raise PredictInputError(
                f"{flag} {pattern}: give --pred, --labels (and --mask) all as glob patterns "
                "paired by their wildcards (e.g. --pred 'preds/vol*_im_pred.h5' --labels "
                "'test/vol*_vesicle_ins.h5'), or --pred and --labels as folders"
            )
    found = {flag: find_files(None, p) for flag, p in (("--pred", pred), ("--labels", labels))}
    if mask is not None:
        found["--mask"] = find_files(None, mask)
    if not found["--labels"]:
        raise PredictInputError(f"--labels {labels}: no reference files match")
    out, missing = [], []
    for key, ref in sorted(found["--labels"].items()):
        prediction = found["--pred"].get(key)
        if prediction is None:
            missing.append(f"{Path(ref).name} (wildcards {list(key)})")
            continue
        keep = found.get("--mask", {}).get(key)
        if mask is not None and keep is None:
            raise PredictInputError(f"--mask {mask}: no mask for {ref} (wildcards {list(key)})")
        case = case_name(prediction).removesuffix("_pred")
        out.append(Pair(case, Path(prediction), Path(ref), Path(keep) if keep else None))
    if missing:
        raise PredictInputError(
            f"--pred {pred}: {len(missing)} of {len(found['--labels'])} references have no "
            f"prediction with the same wildcard part: {', '.join(missing[:5])}"
        )
    return out


def _pair_folders(pred_dir: Path, labels_dir: Path, ending: str) -> list[tuple[str, Path, Path]]:
    """nnU-Net's rule: every reference needs a prediction; extra predictions are ignored."""
    for flag, folder in (("--pred", pred_dir), ("--labels", labels_dir)):
        if not folder.is_dir():
            raise PredictInputError(f"{flag} {folder}: not a directory")
    refs = sorted(p for p in labels_dir.glob(f"*{ending}") if not p.name.startswith("."))
    if not refs:
        stacks = any(is_stack_file(p) for p in labels_dir.iterdir())
        hint = (
            "; HDF5/TIFF stacks are paired by glob patterns: --pred 'preds/vol*_im_pred.h5' "
            "--labels 'test/vol*_vesicle_ins.h5' [--mask 'test/vol*_mask.h5']"
            if stacks
            else ""
        )
        raise PredictInputError(f"--labels {labels_dir}: no reference files *{ending}{hint}")
    missing = [p.name for p in refs if not (pred_dir / p.name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" * (len(missing) > 5))
        found = sorted(p.name for p in pred_dir.glob(f"*{ending}"))[:5]
        raise PredictInputError(
            f"--pred {pred_dir}: {len(missing)} of {len(refs)} references have no prediction "
            f"({shown}); predictions there: {', '.join(found) or 'none'}"
        )
    return [(p.name[: -len(ending)], pred_dir / p.name, p) for p in refs]


def load(
    path: Path, request: EvaluateRequest
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """(integer array, affine or None for a stack, spacing in mm) of a label map."""
    if is_stack_file(path):
        data = read_stack(path, request.dataset_key)
        size = request.voxel_size
        spacing = tuple(float(v) / NM_PER_MM for v in size) if size else (1.0, 1.0, 1.0)
        return np.rint(data).astype(np.int64), None, spacing
    return load_nifti_label_map(path)


def load_nifti_label_map(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(integer array, affine, spacing in mm) of a 3D NIfTI label map (a trailing axis of
    size 1 is dropped)."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises several types for unreadable files
        raise PredictInputError(
            f"{path}: cannot be read as NIfTI ({err}); stacks end "
            f"{', '.join('.' + s for s in STACK_SUFFIXES)}"
        ) from None
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PredictInputError(f"{path}: a label map must be 3D, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.rint(data).astype(np.int64), np.asarray(img.affine), zooms


def load_pair(
    pair: Pair, request: EvaluateRequest
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """(prediction, reference, mask or None, spacing), checked to share one grid."""
    pred, pred_affine, _ = load(pair.prediction, request)
    ref, ref_affine, spacing = load(pair.reference, request)
    if pred.shape != ref.shape:
        raise PredictInputError(
            f"{pair.prediction} has shape {pred.shape}, its reference {pair.reference} "
            f"{ref.shape}: a prediction must be on its reference's grid"
        )
    both = pred_affine is not None and ref_affine is not None
    if both and not np.allclose(pred_affine, ref_affine, atol=1e-3):  # type: ignore[arg-type]
        raise PredictInputError(
            f"{pair.prediction} is not on the grid of its reference {pair.reference}: "
            "their affines differ (a prediction must be on its reference's grid)"
        )
    mask = None
    if pair.mask is not None:
        mask = load(pair.mask, request)[0] > 0
        if mask.shape != ref.shape:
            raise PredictInputError(
                f"mask {pair.mask} has shape {mask.shape}, its reference {ref.shape}"
            )
    if request.binary_reference:
        ref = (ref > 0).astype(np.int64)
    return pred, ref, mask, spacing
