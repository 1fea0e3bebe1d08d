"""EM stacks and every volume format, on real files: HDF5 and TIFF stacks with masks, the
dataset-key error, NRRD / MHA / MHD in the nnU-Net and datalist layouts, and the readability
check that names an unreadable file before MONAI would fail on it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import itk
import numpy as np
import pytest
import tifffile
import torch
from omegaconf import DictConfig, OmegaConf

from recipes.components.data.em_demo_data import ensure_em_demo_dataset
from recipes.components.data.em_io import DatasetKeyError, H5Reader
from recipes.components.data.loaders import build_data
from recipes.components.data.readable import UnreadableDataError, check_readable

REPO = Path(__file__).resolve().parents[1]


def _data(root: Path, **extra: object) -> DictConfig:
    base = {
        "root": str(root),
        "format": "h5",
        "synthetic": False,
        "image": "vol*_im.h5",
        "label": "vol*_vesicle_ins.h5",
        "mask": "vol*_mask.h5",
        "val_image": "vol_val*_im.h5",
        "val_label": "vol_val*_vesicle_ins.h5",
        "val_mask": "vol_val*_mask.h5",
        "dataset_key": "main",
        "voxel_size": [30.0, 8.0, 8.0],
        "instance_labels": True,
        "channel_names": ["em"],
        "class_names": ["background", "vesicle"],
        "in_channels": 1,
        "num_classes": 2,
        "spacing": None,
        "normalize_nonzero": False,
        "val_fraction": 0.34,
        "split_seed": 0,
        "cache_rate": 1.0,
    }
    return OmegaConf.create({**base, **extra})


def _training(patch: list[int]) -> DictConfig:
    return OmegaConf.create(
        {
            "patch_size": patch,
            "batch_size": 2,
            "samples_per_volume": 2,
            "pos_fraction": 0.5,
            "augment": True,
            "num_workers": 0,
        }
    )


def _h5(path: Path) -> np.ndarray:
    with h5py.File(path) as f:
        return np.asarray(f["main"])


@pytest.fixture(scope="module")
def em_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_em_demo_dataset(tmp_path_factory.mktemp("em") / "em", train=3, val=1)


def test_h5_stacks_load_with_masks_voxel_size_and_validation_files(em_root: Path) -> None:
    assert check_readable(_data(em_root)) == []
    bundle = build_data(
        _data(em_root), _training([32, 32, 8]), 0, None, None, {"name": "em_instance"}
    )
    info = bundle.info
    assert info.layout == "h5" and info.split == "validation-files"
    assert info.train_cases == ("vol1_im", "vol2_im", "vol3_im")  # vol_val1 left out
    assert info.val_cases == ("vol_val1_im",)

    [val] = list(bundle.val_loader)
    stack, truth = _h5(em_root / "vol_val1_im.h5"), _h5(em_root / "vol_val1_vesicle_ins.h5")
    z, y, x = stack.shape
    assert val["image"].shape == (1, 1, x, y, z)  # z last, as every volume of the recipe
    assert np.array_equal(val["label"][0, 0].numpy(), truth.transpose(2, 1, 0))  # instance ids
    assert np.array_equal(val["mask"][0, 0].numpy(), _h5(em_root / "vol_val1_mask.h5").T)
    assert val["target"].shape == (1, 3, x, y, z)
    spacing = torch.diagonal(val["image"].affine[0])[:3].tolist()
    assert spacing == pytest.approx([8e-6, 8e-6, 30e-6])  # nm -> mm, x y z

    bundle.set_epoch(1)
    batch = next(iter(bundle.train_loader))
    assert batch["image"].shape == (4, 1, 32, 32, 8) and batch["mask"].shape == (4, 1, 32, 32, 8)
    assert batch["target"].shape == (4, 3, 32, 32, 8)
    # Semantic task on the same files: instance ids train as foreground.
    semantic = build_data(_data(em_root), _training([32, 32, 8]), 0)
    assert set(next(iter(semantic.val_loader))["label"].unique().tolist()) == {0.0, 1.0}


def test_tiff_stacks_load_with_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        labels = np.zeros((6, 20, 24), np.uint16)
        labels[1:5, 4:12, 5:13] = 1
        labels[2:6, 12:18, 14:22] = 2
        mask = np.ones_like(labels, np.uint8)
        mask[:, :, :3] = 0
        image = (100 + 50 * (labels > 0) + rng.normal(0, 5, labels.shape)).astype(np.uint8)
        tifffile.imwrite(tmp_path / f"s{i}_im.tif", image)
        tifffile.imwrite(tmp_path / f"s{i}_seg.tif", labels)
        tifffile.imwrite(tmp_path / f"s{i}_mask.tiff", mask)
    cfg = _data(
        tmp_path,
        format="tiff",
        image="s*_im.tif",
        label="s*_seg.tif",
        mask="s*_mask.tiff",
        val_image=None,
        val_label=None,
        val_mask=None,
    )
    assert check_readable(cfg) == []
    bundle = build_data(cfg, _training([16, 16, 4]), 0)
    assert bundle.info.split == "random" and len(bundle.info.val_cases) == 1
    val = next(iter(bundle.val_loader))
    assert val["image"].shape == (1, 1, 24, 20, 6) and val["mask"].shape == (1, 1, 24, 20, 6)
    assert float(val["mask"][0, 0, :3].sum()) == 0 and float(val["mask"][0, 0, 3:].min()) == 1
    assert set(val["label"].unique().tolist()) == {0.0, 1.0}
    bundle.set_epoch(1)
    assert next(iter(bundle.train_loader))["mask"].shape == (4, 1, 16, 16, 4)


def test_a_file_without_the_dataset_key_is_named_with_the_keys_it_has(tmp_path: Path) -> None:
    root = ensure_em_demo_dataset(tmp_path / "em", train=2, val=1)
    wrong = root / "vol2_vesicle_ins.h5"
    labels = _h5(wrong)
    wrong.unlink()
    with h5py.File(wrong, "w") as f:
        f.create_dataset("volumes/labels", data=labels)
        f.create_dataset("raw", data=labels)
    [problem] = check_readable(_data(root))
    assert str(wrong) in problem and "no dataset 'main'" in problem
    assert "['raw', 'volumes/labels']" in problem
    with pytest.raises(UnreadableDataError, match=r"vol2_vesicle_ins\.h5: no dataset 'main'"):
        build_data(_data(root), _training([32, 32, 8]), 0)
    with pytest.raises(DatasetKeyError, match=r"the file has \['raw', 'volumes/labels'\]"):
        H5Reader("main").read(wrong)
    # The key is configurable, and a path inside the file works too.
    assert H5Reader("volumes/labels").read(wrong).shape == labels.shape


def _write_itk(path: Path, zyx: np.ndarray) -> None:
    image = itk.image_from_array(np.ascontiguousarray(zyx))
    image.SetSpacing([0.8, 0.8, 3.0])  # x, y, z in mm
    itk.imwrite(image, str(path))


def _cases(n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        label = np.zeros((8, 16, 16), np.uint8)
        label[2:6, 3 + i : 9 + i, 4:12] = 1
        out.append(((label * 10 + rng.normal(0, 1, label.shape)).astype(np.float32), label))
    return out


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".mhd", ".nii.gz"])
def test_nnunet_raw_datasets_in_every_file_ending_load(tmp_path: Path, ending: str) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i, (image, label) in enumerate(_cases()):
        _write_itk(tmp_path / "imagesTr" / f"em_{i:03d}_0000{ending}", image)
        _write_itk(tmp_path / "labelsTr" / f"em_{i:03d}{ending}", label)
    meta = {
        "channel_names": {"0": "EM"},
        "labels": {"background": 0, "vesicle": 1},
        "numTraining": 3,
        "file_ending": ending,
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    cfg = _data(tmp_path, format="nnunet", val_fraction=0.34)
    assert check_readable(cfg) == []
    bundle = build_data(cfg, _training([8, 8, 4]), 0)
    val = next(iter(bundle.val_loader))
    # Image and label read alike (same orientation): the bright voxels are the label.
    assert torch.equal(val["label"][0, 0] > 0, val["image"][0, 0] > val["image"].mean() + 1)
    assert val["image"].shape[2:] == (16, 16, 8)


def test_a_datalist_of_nrrd_and_mha_files_loads(tmp_path: Path) -> None:
    entries = []
    for i, (image, label) in enumerate(_cases()):
        _write_itk(tmp_path / f"c{i}.nrrd", image)
        _write_itk(tmp_path / f"c{i}_seg.mha", label)
        entries.append({"image": f"c{i}.nrrd", "label": f"c{i}_seg.mha"})
    (tmp_path / "list.json").write_text(json.dumps({"training": entries}))
    cfg = _data(tmp_path, format="datalist", datalist=str(tmp_path / "list.json"))
    assert check_readable(cfg) == []
    val = next(iter(build_data(cfg, _training([8, 8, 4]), 0).val_loader))
    assert val["image"].shape == (1, 1, 16, 16, 8) and val["label"].shape == (1, 1, 16, 16, 8)


def test_an_unknown_extension_is_named_before_any_voxel_is_read(tmp_path: Path) -> None:
    entries = []
    for i in range(2):
        for name in (f"c{i}.xyz", f"c{i}_seg.xyz"):
            (tmp_path / name).write_bytes(b"not an image")
        entries.append({"image": f"c{i}.xyz", "label": f"c{i}_seg.xyz"})
    (tmp_path / "list.json").write_text(json.dumps({"training": entries}))
    cfg = _data(tmp_path, format="datalist", datalist=str(tmp_path / "list.json"))
    [problem] = check_readable(cfg)
    assert problem.startswith(f"{tmp_path / 'c0.xyz'} (and 3 more .xyz files): no reader")
    assert "'.xyz'" in problem and ".nrrd" in problem and ".h5" in problem
    with pytest.raises(UnreadableDataError, match=r"c0\.xyz .*no reader for extension '\.xyz'"):
        build_data(cfg, _training([8, 8, 4]), 0)
    # A dataset that is not there: nothing to say at plan time unless asked.
    missing = _data(tmp_path / "nowhere")
    assert check_readable(missing) == []
    assert "no image files match" in check_readable(missing, listing_errors=True)[0]


def test_nrrd_without_an_installed_reader_fails_at_planning_naming_file_and_readers(
    tmp_path: Path,
) -> None:
    """The reported case: an nnU-Net raw dataset with file_ending .nrrd, on a machine where
    neither ITK nor pynrrd is installed (``sys.modules[name] = None`` makes them
    unimportable, as if absent). The check names the file, the extension and the readers
    that would open it; the recipe stops with that message, not MONAI's 'applying
    transform'."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i, (image, label) in enumerate(_cases(2)):
        _write_itk(tmp_path / "imagesTr" / f"em_{i:03d}_0000.nrrd", image)
        _write_itk(tmp_path / "labelsTr" / f"em_{i:03d}.nrrd", label)
    meta = {"channel_names": {"0": "EM"}, "labels": {"background": 0, "vesicle": 1}}
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nrrd"}))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["itk"] = None
        sys.modules["nrrd"] = None
        from omegaconf import OmegaConf
        from recipes.components.data.loaders import build_data
        from recipes.components.data.readable import check_readable
        cfg = OmegaConf.create({{"root": {str(tmp_path)!r}, "format": "nnunet",
            "in_channels": 1, "num_classes": 2, "spacing": None, "normalize_nonzero": False,
            "val_fraction": 0.5, "split_seed": 0, "cache_rate": 0.0}})
        for problem in check_readable(cfg):
            print("PLAN:", problem)
        train = OmegaConf.create({{"patch_size": [8, 8, 4], "batch_size": 1,
            "samples_per_volume": 1, "pos_fraction": 0.5, "augment": False}})
        build_data(cfg, train, 0)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    plan = [line for line in run.stdout.splitlines() if line.startswith("PLAN:")]
    assert len(plan) == 1, run.stdout + run.stderr
    first = tmp_path / "imagesTr" / "em_000_0000.nrrd"
    assert f"{first} (and 3 more .nrrd files): extension '.nrrd' is read by" in plan[0]
    assert "NrrdReader (pip install pynrrd) or ITKReader (pip install itk)" in plan[0]
    assert run.returncode != 0
    assert "UnreadableDataError: cannot read the dataset" in run.stderr
    assert "applying transform" not in run.stderr


def test_the_planning_check_imports_neither_torch_nor_monai(em_root: Path) -> None:
    """check_readable is for ``runner plan``: importing and calling it stays light."""
    script = textwrap.dedent(
        f"""
        import sys
        from recipes.components.data.readable import check_readable
        cfg = {{"root": {str(em_root)!r}, "format": "h5", "image": "vol*_im.h5",
               "label": "vol*_vesicle_ins.h5", "mask": "vol*_mask.h5"}}
        assert check_readable(cfg) == [], check_readable(cfg)
        print(sorted(m for m in ("torch", "monai") if m in sys.modules))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
