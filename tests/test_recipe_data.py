"""Demo data generation and every loading path of the recipe, on real NIfTI files: the MSD,
nnU-Net v2, datalist and ISLES'24 layouts, channel selection, k-fold splits (and their
MLflow record), the DataLoader settings, and exact resume with persistent workers."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from monai.data import CacheDataset
from omegaconf import DictConfig, OmegaConf

from recipes.components.data.demo_data import DESCRIPTION, ensure_demo_dataset, make_case
from recipes.components.data.loaders import DataBundle, build_data, read_dataset, split_cases
from recipes.components.data.splits import kfold_split
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
from recipes.segmentation.train import train
from runner.cli import main as runner_main
from tests import datasets

REPO = Path(__file__).resolve().parents[1]

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
            "cache_rate": 1.0,
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
    msd = datasets.msd(tmp_path / "Task01_Demo", demo_root, cases=CASES)

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


# --- the layouts added for issue #7 ------------------------------------------------------------
# Tiny on purpose: 6 cases of 16^3, 16^3 patches.
TINY_CASES = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 6 cases as nnU-Net, ISLES'24, MSD and a datalist; one MLflow store."""
    base = tmp_path_factory.mktemp("layouts")
    src = datasets.nnunet(base / "demo", cases=TINY_CASES)
    return {
        "base": base,
        "nnunet": src,
        "isles24": datasets.isles24(base / "isles24", src, cases=TINY_CASES),
        "msd": datasets.msd(base / "msd", src, cases=TINY_CASES),
        "datalist": datasets.datalist(src / "datalist.json", src, TINY_CASES, relative_to=src),
    }


def _tiny_cfgs(**data: object) -> tuple[DictConfig, DictConfig]:
    data_cfg, train_cfg = _cfgs(Path("unused"))
    train_cfg.patch_size = [16, 16, 16]
    for key, value in data.items():
        OmegaConf.update(data_cfg, key, value, force_add=True)
    return data_cfg, train_cfg


def _val_images(bundle: DataBundle) -> list[torch.Tensor]:
    return [batch["image"].as_tensor() for batch in bundle.val_loader]


def test_datalist_resolves_relative_paths_and_uses_its_validation_list(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    src = tiny["nnunet"]
    names = {"channel_names": ["CBF", "TMAX"], "class_names": ["background", "lesion"]}
    # Beside the files, paths relative to the datalist's own directory (MONAI's default).
    listed = datasets.datalist(
        src / "with_val.json", src, TINY_CASES, validation=2, relative_to=src
    )
    bundle = build_data(
        *_tiny_cfgs(root=None, format="datalist", datalist=str(listed), **names), seed=0
    )
    assert bundle.info.layout == "datalist" and bundle.info.split == "datalist"
    assert bundle.info.val_cases == ("demo_004", "demo_005")  # the datalist's own list
    assert bundle.info.train_cases == ("demo_000", "demo_001", "demo_002", "demo_003")
    assert bundle.info.channel_names == ("CBF", "TMAX")
    batch = next(iter(bundle.train_loader))
    assert batch["image"].shape == (4, 2, 16, 16, 16)  # 2 volumes x 2 patches

    # Elsewhere, paths relative to data.root.
    moved = datasets.datalist(tmp_path / "lists" / "dl.json", src, TINY_CASES, 2, relative_to=src)
    again = build_data(
        *_tiny_cfgs(root=str(src), format="datalist", datalist=str(moved), **names), seed=0
    )
    assert again.info.val_cases == bundle.info.val_cases
    for a, b in zip(_val_images(bundle), _val_images(again), strict=True):
        torch.testing.assert_close(a, b)

    with pytest.raises(ValueError, match=r"own 'validation' list; data.num_folds"):
        build_data(
            *_tiny_cfgs(root=None, format="datalist", datalist=str(listed), num_folds=2, **names),
            seed=0,
        )


def test_datalist_fold_keys_define_the_folds(tiny: dict[str, Path]) -> None:
    src = tiny["nnunet"]
    listed = datasets.datalist(src / "folds.json", src, TINY_CASES, folds=3, relative_to=src)
    names = {"channel_names": ["CBF", "TMAX"], "class_names": ["background", "lesion"]}
    cfgs = _tiny_cfgs(root=None, format="datalist", datalist=str(listed), num_folds=3, **names)
    cfgs[0].fold = 1
    info = build_data(*cfgs, seed=0).info
    assert info.split == "datalist-folds" and (info.fold, info.num_folds) == (1, 3)
    assert info.val_cases == ("demo_001", "demo_004")  # "fold": i % 3 == 1
    cfgs[0].num_folds = 2
    with pytest.raises(ValueError, match=r"assigns folds \[0, 1, 2\]; data.num_folds=2"):
        build_data(*cfgs, seed=0)


def test_datalist_errors_are_clear(tiny: dict[str, Path], tmp_path: Path) -> None:
    src = tiny["nnunet"]
    listed = str(tiny["datalist"])
    with pytest.raises(ValueError, match=r"set data.channel_names"):
        build_data(*_tiny_cfgs(root=None, format="datalist", datalist=listed), seed=0)
    with pytest.raises(ValueError, match=r"needs data.datalist"):
        build_data(*_tiny_cfgs(root=str(src), format="datalist"), seed=0)
    with pytest.raises(FileNotFoundError, match=r"nope.json not found"):
        build_data(*_tiny_cfgs(root=str(src), format="datalist", datalist="nope.json"), seed=0)
    three = {"channel_names": ["CBF", "TMAX", "MTT"], "class_names": ["background", "lesion"]}
    with pytest.raises(ValueError, match=r"entry 0 lists 2 image files, data.channel_names has 3"):
        build_data(*_tiny_cfgs(root=None, format="datalist", datalist=listed, **three), seed=0)
    (tmp_path / "empty.json").write_text('{"validation": []}')
    with pytest.raises(ValueError, match="non-empty 'training' list"):
        read_dataset(tmp_path, "datalist", datalist=tmp_path / "empty.json")
    with pytest.raises(ValueError, match="unknown dataset layout 'bids'"):
        read_dataset(src, "bids")


def test_isles24_release_layout_is_read_per_subject(tiny: dict[str, Path], tmp_path: Path) -> None:
    items, info = read_dataset(tiny["isles24"], "isles24")
    assert info.layout == "isles24" and info.channel_names == ("CBF", "CBV", "MTT", "TMAX")
    assert info.class_names == ("background", "infarct")
    assert [i["case"] for i in items] == [f"sub-stroke{n:04d}" for n in range(1, TINY_CASES + 1)]
    first = items[0]
    assert [Path(p).name for p in first["image"]] == [
        f"sub-stroke0001_ses-01_space-ncct_{m}.nii.gz" for m in ("cbf", "cbv", "mtt", "tmax")
    ]
    assert Path(first["image"][0]).parent.name == "perfusion-maps"
    assert first["label"].endswith(
        "derivatives/sub-stroke0001/ses-02/sub-stroke0001_ses-02_lesion-msk.nii.gz"
    )
    # data.root may also be derivatives/ itself.
    assert read_dataset(tiny["isles24"] / "derivatives", "isles24")[0] == items

    # Other session spellings and the re-exported mask name are found too.
    other = datasets.isles24(
        tmp_path / "other",
        tiny["nnunet"],
        cases=2,
        sessions=("ses-0001", "ses-0002"),
        mask_name="space-ncct_lesion-msk",
    )
    items2, _ = read_dataset(other, "isles24", channel_names=["tmax"])
    assert [Path(i["image"][0]).name for i in items2] == [
        "sub-stroke0001_ses-0001_space-ncct_tmax.nii.gz",
        "sub-stroke0002_ses-0001_space-ncct_tmax.nii.gz",
    ]
    assert items2[1]["label"].endswith("sub-stroke0002_ses-0002_space-ncct_lesion-msk.nii.gz")


def test_isles24_missing_or_ambiguous_files_name_the_subject(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    root = datasets.isles24(tmp_path / "isles", tiny["nnunet"], cases=3)
    subject = root / "derivatives" / "sub-stroke0002"
    (
        subject / "ses-01" / "perfusion-maps" / "sub-stroke0002_ses-01_space-ncct_tmax.nii.gz"
    ).unlink()
    with pytest.raises(FileNotFoundError) as missing:
        read_dataset(root, "isles24")
    message = str(missing.value)
    assert "sub-stroke0002" in message and "TMAX map" in message
    assert "'ses-*/**/sub-stroke0002_ses-*_space-ncct_tmax.nii*'" in message
    assert f"under {subject}" in message
    # Selecting the maps that exist reads it fine.
    assert len(read_dataset(root, "isles24", channel_names=["CBF", "CBV"])[0]) == 3

    mask = subject / "ses-02" / "sub-stroke0002_ses-02_lesion-msk.nii.gz"
    (mask.parent / "extra").mkdir()
    (mask.parent / "extra" / mask.name).write_bytes(mask.read_bytes())
    with pytest.raises(ValueError, match=r"sub-stroke0002: 2 mask files match .* keep one"):
        read_dataset(root, "isles24", channel_names=["CBF"])
    with pytest.raises(FileNotFoundError, match=r"no ISLES'24 subjects \(sub-\*/ folders\)"):
        read_dataset(tmp_path, "isles24")


def test_isles24_cbf_tmax_loads_the_same_voxels_as_the_nnunet_export(tiny: dict[str, Path]) -> None:
    """Channel selection by name (any case) on per-file maps: CBF + TMAX of ISLES'24 are the
    demo's two channels, and k-fold puts the same cases in the same folds."""
    isles = build_data(
        *_tiny_cfgs(
            root=str(tiny["isles24"]),
            format="isles24",
            channels=["cbf", "TMAX"],
            num_folds=3,
            fold=2,
        ),
        seed=0,
    )
    demo = build_data(*_tiny_cfgs(root=str(tiny["nnunet"]), num_folds=3, fold=2), seed=0)
    assert isles.info.channel_names == ("CBF", "TMAX") and isles.info.split == "kfold"
    assert [c.replace("sub-stroke", "") for c in isles.info.val_cases] == [
        f"{int(c.removeprefix('demo_')) + 1:04d}" for c in demo.info.val_cases
    ]
    for a, b in zip(_val_images(isles), _val_images(demo), strict=True):
        assert a.shape == (1, 2, 16, 16, 16)
        torch.testing.assert_close(a, b)


def test_channel_selection_on_4d_images_and_its_errors(tiny: dict[str, Path]) -> None:
    full = _val_images(build_data(*_tiny_cfgs(root=str(tiny["msd"])), seed=0))
    tmax = build_data(*_tiny_cfgs(root=str(tiny["msd"]), channels=["tmax"], in_channels=1), seed=0)
    assert tmax.info.channel_names == ("TMAX",)
    for a, b in zip(_val_images(tmax), full, strict=True):
        torch.testing.assert_close(a[:, 0], b[:, 1])
    swapped = build_data(*_tiny_cfgs(root=str(tiny["msd"]), channels=["TMAX", "cbf"]), seed=0)
    for a, b in zip(_val_images(swapped), full, strict=True):
        torch.testing.assert_close(a, b.flip(1))
    assert next(iter(tmax.train_loader))["image"].shape[1] == 1
    one = build_data(*_tiny_cfgs(root=str(tiny["msd"]), channels="Tmax", in_channels=1), seed=0)
    assert one.info.channel_names == ("TMAX",)  # a single name needs no list

    with pytest.raises(ValueError, match=r"no channel 'adc' .* valid names: CBF, TMAX"):
        build_data(*_tiny_cfgs(root=str(tiny["msd"]), channels=["adc"]), seed=0)
    with pytest.raises(
        ValueError,
        match=r"data.in_channels=2, but 1 channels are fed: \['TMAX'\].*set data.in_channels=1",
    ):
        build_data(*_tiny_cfgs(root=str(tiny["msd"]), channels=["tmax"]), seed=0)


KFOLD_SEED0 = [["c02", "c06"], ["c07", "c08"], ["c03", "c04"], ["c00", "c09"], ["c01", "c05"]]


def test_kfold_is_deterministic_disjoint_and_covering() -> None:
    items = [{"case": f"c{i:02d}"} for i in range(10)]
    shuffled = [items[i] for i in (3, 9, 0, 7, 1, 5, 2, 8, 6, 4)]
    folds = [kfold_split(items, 5, f, seed=0) for f in range(5)]
    vals = [[i["case"] for i in val] for _, val in folds]
    # Pinned: numpy's legacy RandomState shuffle is the same on every machine and version.
    assert vals == KFOLD_SEED0
    assert [[i["case"] for i in kfold_split(shuffled, 5, f, 0)[1]] for f in range(5)] == vals
    assert sorted(c for v in vals for c in v) == [i["case"] for i in items]  # covering, disjoint
    for train_items, val in folds:
        assert not {i["case"] for i in train_items} & {i["case"] for i in val}
        assert len(train_items) + len(val) == 10
    uneven = [[i["case"] for i in kfold_split(items[:7], 3, f, 0)[1]] for f in range(3)]
    assert sorted(len(v) for v in uneven) == [2, 2, 3]
    assert [[i["case"] for i in kfold_split(items, 5, f, 1)[1]] for f in range(5)] != vals

    for num_folds, fold, match in [
        (5, 5, r"data.fold must be one of 0..4 for data.num_folds=5, got 5"),
        (5, -1, "data.fold must be one of 0..4"),
        (1, 0, "data.num_folds must be an integer >= 2"),
        (11, 0, "data.num_folds=11 needs at least that many cases, got 10"),
    ]:
        with pytest.raises(ValueError, match=match):
            kfold_split(items, num_folds, fold, 0)


def test_loader_settings_reach_the_dataloaders(tiny: dict[str, Path]) -> None:
    data_cfg, train_cfg = _tiny_cfgs(root=str(tiny["nnunet"]), cache_rate=0.5)
    train_cfg.update(
        {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 3, "pin_memory": True}
    )
    train_cfg.multiprocessing_context = "spawn"
    bundle = build_data(data_cfg, train_cfg, seed=0)
    for loader in (bundle.train_loader, bundle.val_loader):
        assert loader.num_workers == 2 and loader.persistent_workers is True
        assert loader.prefetch_factor == 3 and loader.pin_memory is True
        assert loader.multiprocessing_context.get_start_method() == "spawn"
    cached = bundle.train_dataset.dataset
    assert isinstance(cached, CacheDataset) and cached.cache_num == 2  # half of 4 train cases

    # Worker-only settings are not passed without workers (a num_workers axis may hold 0).
    train_cfg.num_workers = 0
    data_cfg.cache_rate = 0.0
    plain = build_data(data_cfg, train_cfg, seed=0)
    assert plain.train_loader.num_workers == 0 and plain.train_loader.persistent_workers is False
    assert plain.train_loader.prefetch_factor is None
    assert plain.train_loader.multiprocessing_context is None
    assert not isinstance(plain.train_dataset.dataset, CacheDataset)

    # The older boolean still works.
    legacy, _ = _tiny_cfgs(root=str(tiny["nnunet"]), cache=False)
    del legacy["cache_rate"]
    assert not isinstance(build_data(legacy, train_cfg, 0).train_dataset.dataset, CacheDataset)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("training.num_workers", -1, "training.num_workers must be an integer >= 0, got -1"),
        ("training.num_workers", "two", "training.num_workers must be an integer"),
        ("training.persistent_workers", "yes", "training.persistent_workers must be true or"),
        ("training.prefetch_factor", 0, "training.prefetch_factor must be an integer >= 1"),
        (
            "training.multiprocessing_context",
            "thread",
            "training.multiprocessing_context must be null or one of fork, spawn, forkserver",
        ),
        ("data.cache_rate", 1.5, r"data.cache_rate must be a number in \[0, 1\], got 1.5"),
        ("data.cache", True, "data.cache_rate .* or the older data.cache .* not both"),
        ("data.val_fraction", 1.0, r"data.val_fraction must be in \[0, 1\)"),
    ],
)
def test_nonsense_data_settings_are_refused(
    tiny: dict[str, Path], key: str, value: object, match: str
) -> None:
    data_cfg, train_cfg = _tiny_cfgs(root=str(tiny["nnunet"]))
    group, name = key.split(".")
    OmegaConf.update(data_cfg if group == "data" else train_cfg, name, value, force_add=True)
    with pytest.raises(ValueError, match=match):
        build_data(data_cfg, train_cfg, seed=0)


def _epochs(bundle: DataBundle, epochs: list[int]) -> list[torch.Tensor]:
    out = []
    for epoch in epochs:
        bundle.set_epoch(epoch)
        out += [
            torch.cat([b["image"].as_tensor(), b["label"].as_tensor()], 1)
            for b in bundle.train_loader
        ]
    return out


def test_batches_follow_seed_and_epoch_whatever_the_workers(tiny: dict[str, Path]) -> None:
    """Shuffle and augmentation are a function of (seed, epoch, case): main-process loading,
    two persistent workers, and a "resumed" loader that starts at epoch 2 all agree."""
    data_cfg, train_cfg = _tiny_cfgs(root=str(tiny["nnunet"]))
    train_cfg.batch_size = 1
    reference = _epochs(build_data(data_cfg, train_cfg, seed=0), [1, 2])
    train_cfg.update({"num_workers": 2, "persistent_workers": True, "prefetch_factor": 1})
    workers = build_data(data_cfg, train_cfg, seed=0)
    assert _epochs(workers, [1, 2]) and len(reference) == 8
    for a, b in zip(_epochs(workers, [1, 2]), reference, strict=True):
        torch.testing.assert_close(a, b)
    resumed = _epochs(build_data(data_cfg, train_cfg, seed=0), [2])
    for a, b in zip(resumed, reference[4:], strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(reference[0], reference[4])  # epochs differ
    other_seed = _epochs(build_data(data_cfg, train_cfg, seed=1), [1])
    assert any(not torch.equal(a, b) for a, b in zip(other_seed, reference[:4], strict=True))


# --- through the trainer: each layout trains, the split reaches MLflow ------------------------


@pytest.fixture(autouse=False)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # MLflow artifacts stay in tmp
    return tmp_path


def _train_cfg(tiny: dict[str, Path], ckpt: Path, *overrides: str) -> DictConfig:
    base = [
        "model.size=tiny",
        "training.patch_size=[16,16,16]",
        "training.samples_per_volume=1",
        "training.max_epochs=1",
        "training.val_interval=1",
        "training.num_threads=1",
        "model=unet",
        f"training.checkpoint_dir={ckpt}",
        f"tracking.uri=sqlite:///{tiny['base'] / 'mlflow.db'}",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=base + list(overrides))


LAYOUT_OVERRIDES = {
    "isles24": [
        "data=isles24",
        "data.channels=[cbf,tmax]",
        "data.in_channels=2",
        "data.num_folds=3",
        "data.fold=1",
    ],
    "msd": ["data=demo"],
    "datalist": [
        "data=datalist",
        "data.channel_names=[CBF,TMAX]",
        "data.in_channels=2",
        "data.class_names=[background,lesion]",
        "data.num_folds=2",
    ],
}


@pytest.mark.parametrize("layout", sorted(LAYOUT_OVERRIDES))
def test_each_layout_trains_and_logs_its_split(
    layout: str, tiny: dict[str, Path], in_tmp: Path
) -> None:
    where = (
        f"data.datalist={tiny['datalist']}" if layout == "datalist" else f"data.root={tiny[layout]}"
    )
    tag = f"tracking.experiment=layout-{layout}"
    cfg = _train_cfg(tiny, in_tmp / "ckpt", *LAYOUT_OVERRIDES[layout], where, tag)
    result = train(cfg)
    assert result.status == "done" and np.isfinite(result.metrics["val_dice"])

    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(f"layout-{layout}").experiment_id])
    params = run.data.params
    split = json.loads(
        Path(client.download_artifacts(run.info.run_id, "split.json", str(in_tmp))).read_text()
    )
    assert split["layout"] == {"msd": "msd"}.get(layout, layout)
    assert sorted(split["train"] + split["val"]) == sorted(set(split["train"] + split["val"]))
    assert len(split["train"]) + len(split["val"]) == TINY_CASES
    assert params["split.n_train"] == str(len(split["train"]))
    assert params["split.n_val"] == str(len(split["val"]))
    assert params["split.method"] == split["method"]
    assert params["data.fold"] == str(cfg.data.fold)
    assert params["data.num_folds"] == str(cfg.data.num_folds)
    if layout == "isles24":
        assert split["method"] == "kfold" and (split["fold"], split["num_folds"]) == (1, 3)
        assert split["channels"] == ["CBF", "TMAX"] and params["split.channels"] == "CBF,TMAX"
        expected = build_data(
            *_tiny_cfgs(
                root=str(tiny["isles24"]),
                format="isles24",
                channels=["cbf", "tmax"],
                num_folds=3,
                fold=1,
            ),
            0,
        )
        assert tuple(split["val"]) == expected.info.val_cases
    elif layout == "msd":
        assert split["method"] == "random" and split["fold"] is None
        assert params["data.num_folds"] == "None"


def test_persistent_workers_resume_exactly(tiny: dict[str, Path], in_tmp: Path) -> None:
    """2 epochs in the main process == 1 epoch + resume with a persistent worker."""
    common = ("scheduler=constant", f"data.root={tiny['nnunet']}", "training.batch_size=1")
    workers = ("training.num_workers=1", "training.persistent_workers=true")
    straight = train(_train_cfg(tiny, in_tmp / "a", "training.max_epochs=2", *common))
    train(_train_cfg(tiny, in_tmp / "b", "training.max_epochs=1", *common, *workers))
    resumed = train(_train_cfg(tiny, in_tmp / "b", "training.max_epochs=2", *common, *workers))
    assert resumed.resumed_from_epoch == 1
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-5)
    a = torch.load(in_tmp / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(in_tmp / "b" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_readme_cross_validation_example_plans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = (REPO / "README.md").read_text().split("### Data\n", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cv.yaml").write_text(example)
    assert runner_main(["plan", "--json", "cv.yaml"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["count"] == 10
    assert {c["run_name"] for c in plan["cells"]} >= {"segresnet_fold0", "dynunet_fold4"}
    assert "data.channels=[cbf,tmax]" in plan["cells"][0]["overrides"]
