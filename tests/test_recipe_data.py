"""Demo data generation and the MSD / nnU-Net v2 loading path, on real NIfTI files."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recipes.components.data import build_data, read_dataset, split_cases
from recipes.components.demo_data import DESCRIPTION, ensure_demo_dataset, make_case

CASES, SIZE = 6, 24


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _cfgs(root: Path, fmt: str = "auto") -> tuple:
    data = OmegaConf.create(
        {
            "root": str(root),
            "format": fmt,
            "synthetic": False,
            "in_channels": 2,
            "num_classes": 2,
            "spacing": None,
            "normalize_nonzero": True,
            "val_fraction": 0.34,
            "split_seed": 0,
            "cache": True,
        }
    )
    training = OmegaConf.create(
        {
            "patch_size": [16, 16, 16],
            "batch_size": 2,
            "samples_per_volume": 2,
            "pos_fraction": 0.5,
            "augment": True,
            "num_workers": 0,
        }
    )
    return data, training


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_dataset(tmp_path_factory.mktemp("data") / "demo", cases=CASES, size=SIZE)


def test_demo_dataset_layout_and_content(demo_root: Path) -> None:
    meta = json.loads((demo_root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CBF", "1": "TMAX"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["numTraining"] == CASES and meta["file_ending"] == ".nii.gz"
    assert meta["description"] == DESCRIPTION
    cbf = nib.load(demo_root / "imagesTr" / "demo_000_0000.nii.gz")
    tmax = nib.load(demo_root / "imagesTr" / "demo_000_0001.nii.gz")
    label = nib.load(demo_root / "labelsTr" / "demo_000.nii.gz")
    assert cbf.get_data_dtype() == np.float32 and cbf.shape == (SIZE,) * 3
    assert np.allclose(cbf.header.get_zooms(), 1.0)
    cbf_a, tmax_a, lesion = cbf.get_fdata(), tmax.get_fdata(), label.get_fdata() > 0
    brain = cbf_a > 0
    assert set(np.unique(label.get_fdata())) == {0.0, 1.0}
    # Lesions: low CBF, high TMAX, relative to the rest of the brain.
    assert cbf_a[lesion].mean() < 0.7 * cbf_a[brain & ~lesion].mean()
    assert tmax_a[lesion].mean() > 2.0 * tmax_a[brain & ~lesion].mean()


def test_demo_dataset_is_deterministic(demo_root: Path, tmp_path: Path) -> None:
    again = ensure_demo_dataset(tmp_path / "again", cases=CASES, size=SIZE)
    assert _files(again) == _files(demo_root)  # byte-identical, gzip headers included
    images, label = make_case(0, 3, SIZE)
    loaded = nib.load(again / "imagesTr" / "demo_003_0001.nii.gz").get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(loaded, images[1])
    loaded_label = nib.load(again / "labelsTr" / "demo_003.nii.gz").get_fdata()
    np.testing.assert_array_equal(loaded_label, label)
    assert not np.array_equal(make_case(1, 3, SIZE)[0], images)  # the seed matters


def test_concurrent_generation_leaves_one_complete_dataset(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            ensure_demo_dataset(root, cases=2, size=16)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(list((root / "imagesTr").iterdir())) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary leftovers


def test_nnunet_dataset_loads(demo_root: Path) -> None:
    data_cfg, train_cfg = _cfgs(demo_root)
    bundle = build_data(data_cfg, train_cfg, seed=0)
    info = bundle.info
    assert info.layout == "nnunet"
    assert info.channel_names == ("CBF", "TMAX") and info.class_names == ("background", "lesion")
    assert len(info.train_cases) == 4 and len(info.val_cases) == 2
    assert not set(info.train_cases) & set(info.val_cases)
    batch = next(iter(bundle.train_loader))
    assert batch["image"].shape == (4, 2, 16, 16, 16)  # 2 volumes x 2 patches
    assert batch["label"].shape == (4, 1, 16, 16, 16)
    assert batch["label"].max() == 1  # foreground-centred patches contain lesion
    val = next(iter(bundle.val_loader))
    assert val["image"].shape == (1, 2, SIZE, SIZE, SIZE)
    brain = val["image"][0, 0] != 0
    # z-score per channel inside the brain
    assert abs(float(val["image"][0, 1][brain].mean())) < 1e-3


def test_split_is_deterministic_and_seeded() -> None:
    items = [{"case": str(i)} for i in range(10)]
    a, b = split_cases(items, 0.2, seed=1), split_cases(items, 0.2, seed=1)
    assert a == b and len(a[1]) == 2
    assert split_cases(items, 0.2, seed=2)[1] != a[1]


def test_msd_dataset_loads_like_nnunet(demo_root: Path, tmp_path: Path) -> None:
    """The same cases as 4D MSD images + a ``training`` list give the same tensors."""
    msd = tmp_path / "Task01_Demo"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    training = []
    for i in range(CASES):
        case = f"demo_{i:03d}"
        channels = [
            nib.load(demo_root / "imagesTr" / f"{case}_{c:04d}.nii.gz").get_fdata(dtype=np.float32)
            for c in range(2)
        ]
        nib.save(
            nib.Nifti1Image(np.stack(channels, axis=-1), np.eye(4)),
            msd / "imagesTr" / f"{case}.nii.gz",
        )
        label = nib.load(demo_root / "labelsTr" / f"{case}.nii.gz")
        nib.save(label, msd / "labelsTr" / f"{case}.nii.gz")
        training.append(
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        )
    meta = {
        "name": "Demo",
        "modality": {"0": "CBF", "1": "TMAX"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": CASES,
        "training": training,
    }
    (msd / "dataset.json").write_text(json.dumps(meta))

    items, info = read_dataset(msd)
    assert info.layout == "msd" and info.channel_names == ("CBF", "TMAX")
    assert items[0]["case"] == "demo_000"

    msd_bundle = build_data(*_cfgs(msd), seed=0)
    nnunet_bundle = build_data(*_cfgs(demo_root, "nnunet"), seed=0)
    assert msd_bundle.info.val_cases == nnunet_bundle.info.val_cases
    for a, b in zip(msd_bundle.val_loader, nnunet_bundle.val_loader, strict=True):
        torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())
        torch.testing.assert_close(a["label"].as_tensor(), b["label"].as_tensor())


def test_channel_mismatch_is_reported(demo_root: Path) -> None:
    data_cfg, train_cfg = _cfgs(demo_root)
    data_cfg.in_channels = 4
    with pytest.raises(ValueError, match="in_channels"):
        build_data(data_cfg, train_cfg, seed=0)
