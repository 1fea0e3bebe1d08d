"""Tiny datasets in each layout the recipe reads, written as real NIfTI files at test time.

All are built from the synthetic demo cases (``recipes.components.data.demo_data``), so the same
case holds the same voxels in every layout: ``demo_00i`` (nnU-Net) is ``sub-stroke000{i+1}``
(ISLES'24) is the i-th datalist / MSD entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from recipes.components.data.demo_data import ensure_demo_dataset


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def nnunet(root: Path, cases: int = 4, size: int = 16) -> Path:
    """The demo dataset: nnU-Net v2 raw, channels CBF and TMAX, labels background/lesion."""
    return ensure_demo_dataset(root, cases=cases, size=size, seed=0)


def isles24_maps(src: Path, case: int) -> dict[str, np.ndarray]:
    """CBF and TMAX of a demo case, plus CBV and MTT derived from them (CBV = CBF x MTT)."""
    cbf = _load(src / "imagesTr" / f"demo_{case:03d}_0000.nii.gz")
    tmax = _load(src / "imagesTr" / f"demo_{case:03d}_0001.nii.gz")
    mtt = np.where(cbf > 0, 4.0 + 0.5 * tmax, 0.0).astype(np.float32)
    return {"cbf": cbf, "cbv": (cbf * mtt / 60.0).astype(np.float32), "mtt": mtt, "tmax": tmax}


def isles24(
    root: Path,
    src: Path,
    cases: int = 4,
    sessions: tuple[str, str] = ("ses-01", "ses-02"),
    mask_name: str = "lesion-msk",
) -> Path:
    """The ISLES'24 release layout (``derivatives/sub-strokeXXXX/ses-01/perfusion-maps/...``).

    ``sessions``: the acute and follow-up folder names (``ses-0001`` in early copies);
    ``mask_name``: ``lesion-msk`` as released, ``space-ncct_lesion-msk`` as re-exported.
    """
    acute, follow_up = sessions
    for i in range(cases):
        sub = f"sub-stroke{i + 1:04d}"
        base = root / "derivatives" / sub
        for name, array in isles24_maps(src, i).items():
            _save(
                array, base / acute / "perfusion-maps" / f"{sub}_{acute}_space-ncct_{name}.nii.gz"
            )
        label = _load(src / "labelsTr" / f"demo_{i:03d}.nii.gz").astype(np.uint8)
        _save(label, base / follow_up / f"{sub}_{follow_up}_{mask_name}.nii.gz")
        # Files the reader must not mistake for a map or the mask.
        _save(label, base / acute / f"{sub}_{acute}_space-ncct_lvo-msk.nii.gz")
        (root / "raw_data" / sub / acute).mkdir(parents=True, exist_ok=True)
    return root


def msd(root: Path, src: Path, cases: int = 4) -> Path:
    """The demo cases as MSD: one 4D (x, y, z, channel) image per case + ``training`` list."""
    training = []
    for i in range(cases):
        case = f"demo_{i:03d}"
        channels = [_load(src / "imagesTr" / f"{case}_{c:04d}.nii.gz") for c in range(2)]
        _save(np.stack(channels, axis=-1), root / "imagesTr" / f"{case}.nii.gz")
        _save(_load(src / "labelsTr" / f"{case}.nii.gz"), root / "labelsTr" / f"{case}.nii.gz")
        training.append(
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        )
    meta = {
        "name": "Demo",
        "modality": {"0": "CBF", "1": "TMAX"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": cases,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def datalist(
    path: Path,
    src: Path,
    cases: int = 4,
    validation: int = 0,
    folds: int | None = None,
    relative_to: Path | None = None,
) -> Path:
    """A MONAI datalist JSON over the demo's per-channel files.

    ``validation``: the last N cases go to a ``validation`` list; ``folds``: each training
    case gets ``"fold": i % folds``; ``relative_to``: paths relative to that directory
    (absolute otherwise).
    """

    def rel(p: Path) -> str:
        return str(p.relative_to(relative_to)) if relative_to else str(p)

    entries: list[dict[str, Any]] = []
    for i in range(cases):
        case = f"demo_{i:03d}"
        entry: dict[str, Any] = {
            "image": [rel(src / "imagesTr" / f"{case}_{c:04d}.nii.gz") for c in range(2)],
            "label": rel(src / "labelsTr" / f"{case}.nii.gz"),
        }
        if folds:
            entry["fold"] = i % folds
        entries.append(entry)
    n_train = cases - validation
    body: dict[str, Any] = {"training": entries[:n_train]}
    if validation:
        body["validation"] = entries[n_train:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1))
    return path
