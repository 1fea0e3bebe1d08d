"""Volumes too big for memory (the ink-detection group's scans): zarr stores and folders of
TIFF slices read a patch at a time over the strided patch grid, on real zarr and TIFF files.
A patch reads only its chunks (proved by breaking every other chunk on disk), a loader
worker receives paths, never voxels, and bad input is named before anything trains."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from omegaconf import OmegaConf

from recipes.components.data.chunked import ZarrKeyError, open_volume, open_zarr_array
from recipes.components.data.grid import grid_starts, patch_stride
from recipes.components.data.loaders import build_data
from recipes.components.data.readable import check_readable
from recipes.components.data.scroll_demo_data import ensure_scroll_demo, make_volume
from recipes.components.training.budget import Budget

SHAPE = (24, 40, 48)  # z, y, x


@pytest.fixture(scope="module")
def scroll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_scroll_demo(tmp_path_factory.mktemp("scroll") / "s", shape=SHAPE)


def _data(root: Path, fmt: str = "zarr", **extra: object) -> OmegaConf:
    suffix = ".zarr" if fmt == "zarr" else ""
    return OmegaConf.create(
        {
            "root": str(root),
            "format": fmt,
            "synthetic": False,
            "image": f"scroll*_volume{suffix}",
            "label": f"scroll*_ink{suffix}",
            "val_image": f"val_scroll*_volume{suffix}",
            "val_label": f"val_scroll*_ink{suffix}",
            "dataset_key": None,
            "voxel_size": None,
            "intensity_range": [0, 255],
            "instance_labels": True,
            "channel_names": ["ct"],
            "class_names": ["background", "ink"],
            "in_channels": 1,
            "num_classes": 2,
            "spacing": None,
            "normalize_nonzero": False,
            "val_fraction": 0.2,
            "split_seed": 0,
            "cache_rate": 1.0,
            **extra,
        }
    )


def _training(patch: list[int], stride: list[int] | None, **extra: object) -> OmegaConf:
    return OmegaConf.create(
        {
            "patch_size": patch,
            "patch_stride": stride,
            "batch_size": 2,
            "samples_per_volume": 1,
            "pos_fraction": 0.5,
            "augment": False,
            "num_workers": 0,
            **extra,
        }
    )


def test_zarr_and_tiff_slices_read_the_same_patch_as_the_volume_holds(scroll: Path) -> None:
    image, _ = make_volume(0, 0, SHAPE)  # (z, y, x), what the files hold
    for path in (scroll / "scroll1_volume.zarr", scroll / "scroll1_volume"):
        vol = open_volume(path)
        assert vol.shape == (48, 40, 24) and vol.shape_zyx == SHAPE  # x, y, z
        patch = vol.read((5, 7, 3), (16, 12, 8))  # x, y, z
        np.testing.assert_array_equal(patch, image[3:11, 7:19, 5:21].transpose(2, 1, 0))
    assert open_volume(scroll / "scroll1_volume").chunks_zyx == (1, 40, 48)  # a slice


def test_a_patch_reads_only_its_chunks(scroll: Path, tmp_path: Path) -> None:
    """Every chunk (zarr) or slice (TIFF) outside the patch is made unreadable on disk: the
    patch still reads; the whole volume no longer does."""
    store = shutil.copytree(scroll / "scroll1_volume.zarr", tmp_path / "v.zarr")
    want = open_volume(store).read((0, 0, 0), (16, 16, 8))  # chunk (0, 0, 0) only
    chunks = [p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunks) > 1
    broken = [p for p in chunks if p.relative_to(store).parts[-3:] != ("0", "0", "0")]
    for p in broken:
        p.write_bytes(b"not a chunk")
    np.testing.assert_array_equal(open_volume(store).read((0, 0, 0), (16, 16, 8)), want)
    with pytest.raises(Exception):  # noqa: B017 - zarr's codec error type is its own
        open_volume(store).read_all()

    folder = shutil.copytree(scroll / "scroll1_volume", tmp_path / "slices")
    want = open_volume(folder).read((4, 4, 2), (8, 8, 3))
    for plane in sorted(folder.iterdir())[5:]:
        plane.write_bytes(b"not a tiff")
    np.testing.assert_array_equal(open_volume(folder).read((4, 4, 2), (8, 8, 3)), want)
    with pytest.raises(Exception):  # noqa: B017 - tifffile's error for a broken file
        open_volume(folder).read_all()


@pytest.mark.parametrize("fmt", ["zarr", "tiff"])
def test_an_epoch_is_the_strided_grid_of_every_volume_read_lazily(scroll: Path, fmt: str) -> None:
    bundle = build_data(_data(scroll, fmt), _training([16, 16, 16], [16, 12, 8]), seed=0)
    grid = bundle.train_dataset.dataset
    # x: 0, 16, 32; y: 0, 12, 24 (40 - 16); z: 0, 8 (24 - 16): 18 patches a volume.
    assert len(grid) == 2 * 18 and len(bundle.train_loader) == 18
    assert grid_starts((48, 40, 24), [16, 16, 16], [16, 12, 8])[-1] == (32, 24, 8)
    # What a spawned worker receives: paths and positions, not a volume (11 kB a volume).
    assert len(pickle.dumps(bundle.train_dataset)) < 64_000
    batch = next(iter(bundle.train_loader))
    assert batch["image"].shape == (2, 1, 16, 16, 16) and batch["image"].dtype == torch.float32
    assert float(batch["image"].min()) >= 0.0 and float(batch["image"].max()) <= 1.0
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
    # Validation reads its volume whole, scaled the same way.
    val = next(iter(bundle.val_loader))
    assert val["image"].shape == (1, 1, 48, 40, 24) and float(val["image"].max()) <= 1.0
    assert bundle.info.train_cases == ("scroll1_volume", "scroll2_volume")


def test_tiff_folders_that_share_a_name_are_named_by_their_wildcards(
    scroll: Path, tmp_path: Path
) -> None:
    for i in (1, 2):  # the Kaggle layout: <fragment>/surface_volume/00.tif ...
        shutil.copytree(scroll / f"scroll{i}_volume", tmp_path / f"frag{i}" / "surface_volume")
        shutil.copytree(scroll / f"scroll{i}_ink", tmp_path / f"frag{i}" / "ink")
    data = _data(tmp_path, "tiff", image="frag*/surface_volume", label="frag*/ink")
    data.val_image = data.val_label = None
    bundle = build_data(data, _training([16, 16, 16], [16, 16, 8]), seed=0)
    assert set(bundle.info.train_cases + bundle.info.val_cases) == {"1", "2"}


def test_chunks_that_make_every_patch_read_the_whole_volume_are_named_with_numbers(
    scroll: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image, _ = make_volume(0, 0, SHAPE)
    for name in ("scroll1_volume.zarr", "scroll1_ink.zarr"):
        out = zarr.open_array(str(tmp_path / name), mode="w", shape=SHAPE, chunks=SHAPE, dtype="u1")
        out[...] = image
    with caplog.at_level(logging.WARNING):
        build_data(
            _data(tmp_path, val_image=None, val_label=None), _training([16, 16, 16], [16, 16, 8]), 0
        )
    warning = next(r.getMessage() for r in caplog.records if "whole volume" in r.getMessage())
    assert (
        "scroll1_volume.zarr: chunks (z, y, x) = (24, 40, 48) over a volume of (24, 40, 48)"
        in warning
    )
    assert (
        "(z, y, x) = (16, 16, 16) touches 1 chunk(s) wherever it lies" in warning
        and "rechunk" in warning
    )
    # The demo's own chunks (16, 32, 32) don't warn.
    assert open_volume(scroll / "scroll1_volume.zarr").chunk_warning([16, 16, 16]) is None


def test_a_zarr_store_without_the_named_array_is_named_with_the_arrays_it_has(
    scroll: Path, tmp_path: Path
) -> None:
    group = zarr.open_group(str(tmp_path / "scan.zarr"), mode="w")
    group.create_array("0", shape=(4, 4, 4), dtype="u1")
    group.create_array("labels/ink", shape=(4, 4, 4), dtype="u1")
    with pytest.raises(ZarrKeyError, match=r"no array 'main'; the store has \['0', 'labels/ink'\]"):
        open_zarr_array(tmp_path / "scan.zarr", "main")
    assert open_zarr_array(tmp_path / "scan.zarr", "labels/ink").shape == (4, 4, 4)
    # Planning says so before anything runs, naming the store.
    data = _data(scroll, dataset_key="volume")
    problems = check_readable(data)
    assert problems and all("is a zarr array, not a group holding 'volume'" in p for p in problems)


@pytest.mark.parametrize(
    ("patch", "stride", "match"),
    [
        ([16, 16, 16], [16, 17, 8], r"patch_stride \[16, 17, 8\] is larger than training.patch_"
         r"size \[16, 16, 16\] \(y: stride 17 > patch 16\)"),
        ([16, 16, 16], [16, 0, 8], r"patch_stride must be integers >= 1"),
        ([16, 16, 16], [16, 16], r"patch_stride must be 3 voxel counts"),
        ([16, 16, 32], [16, 16, 16], r"scroll1_volume: volume of \(x, y, z\) \(48, 40, 24\) is "
         r"smaller than training.patch_size \[16, 16, 32\] \(z: 24 < 32\)"),
    ],
)  # fmt: skip
def test_bad_grids_are_refused_with_the_numbers(
    scroll: Path, patch: list[int], stride: list[int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_data(_data(scroll), _training(patch, stride), seed=0)


def test_chunked_volumes_need_an_intensity_window(scroll: Path) -> None:
    with pytest.raises(ValueError, match=r"set data.intensity_range: \[low, high\]"):
        build_data(_data(scroll, intensity_range=None), _training([16] * 3, [16] * 3), seed=0)
    assert patch_stride(_training([16] * 3, None)) is None


def test_a_folder_of_slices_with_a_slice_of_another_shape_is_named(
    scroll: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(scroll / "scroll1_volume", tmp_path / "slices")
    tifffile.imwrite(sorted(folder.iterdir())[3], np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"03.tif: slice of shape \(8, 8\), the folder's first"):
        open_volume(folder).read((0, 0, 0), (8, 8, 8))


def test_steps_per_epoch_caps_epochs_and_max_steps_ends_the_run_inside_one() -> None:
    def budget(**keys: object) -> Budget:
        tcfg = OmegaConf.create({"max_epochs": 4, "accumulate_steps": 2, **keys})
        return Budget.of(tcfg, full_batches=21)  # 21 batches: 11 steps of 2

    assert [budget().batches(e) for e in (1, 4)] == [None, None] and budget().epochs == 4
    capped = budget(steps_per_epoch=5, max_steps=17)  # 10 batches an epoch; 17 = 5+5+5+2
    assert (capped.steps_per_epoch, capped.total_steps, capped.epochs) == (5, 17, 4)
    assert [capped.batches(e) for e in (1, 2, 3, 4)] == [10, 10, 10, 4]
    assert budget(max_steps=1000).total_steps == 44  # max_epochs ends it first
    for key in ("steps_per_epoch", "max_steps"):
        with pytest.raises(ValueError, match=f"training.{key} must be an integer >= 1 or null"):
            budget(**{key: 0})
