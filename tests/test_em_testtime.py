"""Test time on EM stacks: ``predict`` reads HDF5 and TIFF volumes and writes instance
predictions (seeded watershed) the way the inputs were stored; an ensemble of different
architectures averages their head maps; ``evaluate`` pairs predictions, references and masks
by glob patterns and writes the adapted Rand error and VI per case into ``summary.json``;
``data.test`` patterns are held out of training.

Real files (h5py, tifffile), real MONAI networks with seeded random weights (no training:
what is checked is the plumbing, not the accuracy; the demo test trains)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from omegaconf import OmegaConf

from recipes.components.data.em_demo_data import ensure_em_demo_dataset
from recipes.components.models.build import build_model
from recipes.components.testtime.held_out import exclude_test, held_out_items
from recipes.components.training.instances import instance_scores
from recipes.contract import ModelRef, PredictInputError, PredictRequest
from recipes.segmentation.predict import predict
from runner.cli import main
from runner.recipe import Recipe


@pytest.fixture(scope="module")
def em(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ModelRef]]:
    """The synthetic EM data (2 training, 1 validation, 1 test volume) and two models of
    different architectures with seeded random weights."""
    root = tmp_path_factory.mktemp("emtt")
    data = ensure_em_demo_dataset(root / "data", train=2, val=1, test=1)
    refs = {}
    for model in ("rsunet", "unet"):
        cfg = Recipe.load("segmentation").compose(
            [
                *("data=em_demo", f"data.root={data}", "task=em_instance", f"model={model}"),
                *("model.size=tiny", "training.patch_size=[48,48,16]", "predict.sw_overlap=0"),
            ]
        )
        torch.manual_seed(0)
        net = build_model(cfg.model)
        path = root / f"{model}.pt"
        torch.save({"model": net.state_dict()}, path)
        refs[model] = ModelRef(cfg, path, model)
    return data, refs


def _inputs(data: Path, folder: Path) -> Path:
    """The test volume as HDF5 (with its label and mask beside it, as PyTC keeps them) and
    as a TIFF stack."""
    folder.mkdir()
    for suffix in ("im", "vesicle_ins", "mask"):
        name = f"vol_test1_{suffix}.h5"
        (folder / name).write_bytes((data / "test" / name).read_bytes())
    with h5py.File(data / "test" / "vol_test1_im.h5") as f:
        tifffile.imwrite(folder / "vol_tif1_im.tif", f["main"][()])
    return folder


def test_predict_reads_and_writes_stacks_and_ensembles_architectures(
    em: tuple[Path, dict[str, ModelRef]], tmp_path: Path
) -> None:
    data, refs = em
    inputs = _inputs(data, tmp_path / "in")
    with h5py.File(inputs / "vol_test1_im.h5") as f:
        zyx = f["main"].shape
    maps = {}
    for name, members in (("rsunet", ["rsunet"]), ("unet", ["unet"]), ("both", ["rsunet", "unet"])):
        out = tmp_path / name
        request = PredictRequest([refs[m] for m in members], out, input_dir=inputs)
        request.save_probabilities, request.progress = True, False
        result = predict(request)
        # data.image's vol*_im.h5 picks the images out of the folder, a TIFF one too
        assert [c.case for c in result.cases] == ["vol_test1_im", "vol_tif1_im"]
        with h5py.File(out / "vol_test1_im_pred.h5") as f:
            instances = f["main"][()]
        assert instances.shape == zyx and instances.dtype == np.int32
        tiff = tifffile.imread(out / "vol_tif1_im_pred.tif")  # the same volume as TIFF
        np.testing.assert_array_equal(tiff, instances)
        with h5py.File(out / "vol_test1_im_probabilities.h5") as f:
            maps[name] = f["main"][()]
        assert maps[name].shape == (3, *zyx)
        assert maps[name].min() >= 0.0 and maps[name].max() <= 1.0  # sigmoid, clipped distance
        record = json.loads((out / "predict.json").read_text())
        assert [m["name"] for m in record["models"]] == members
    # Different architectures, one ensemble: the mean of their head maps.
    np.testing.assert_allclose(maps["both"], (maps["rsunet"] + maps["unet"]) / 2, atol=1e-6)
    assert not np.allclose(maps["rsunet"], maps["unet"], atol=1e-3)


def test_evaluate_scores_instances_inside_masks_by_pattern(
    em: tuple[Path, dict[str, ModelRef]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, refs = em
    inputs = _inputs(data, tmp_path / "in")
    predict(PredictRequest([refs["rsunet"]], tmp_path / "pred", input_dir=inputs, progress=False))
    out = tmp_path / "summary.json"
    args = ["evaluate", "--pred", str(tmp_path / "pred" / "vol_test*_im_pred.h5")]
    args += ["--labels", str(inputs / "vol_test*_vesicle_ins.h5")]
    args += ["--mask", str(inputs / "vol_test*_mask.h5"), "--instances", "-o", str(out)]
    assert main(args) == 0
    assert "adapted Rand error" in capsys.readouterr().out
    summary = json.loads(out.read_text())
    [case] = summary["metric_per_case"]
    with h5py.File(tmp_path / "pred" / "vol_test1_im_pred.h5") as f:
        pred = f["main"][()]
    with h5py.File(inputs / "vol_test1_vesicle_ins.h5") as f:
        ref = f["main"][()]
    with h5py.File(inputs / "vol_test1_mask.h5") as f:
        mask = f["main"][()]
    want = instance_scores(pred, ref, mask)  # the metrics validation logs, same voxels
    got = case["metrics"]["1"]
    for key in ("adapted_rand_error", "voi_split", "voi_merge", "voi"):
        assert got[key] == pytest.approx(want[key]), key
    assert got["Dice"] == pytest.approx(want["dice_fg"])
    assert summary["foreground_mean"]["adapted_rand_error"] == pytest.approx(
        want["adapted_rand_error"]
    )
    assert case["mask_file"].endswith("vol_test1_mask.h5") and summary["task"] == "em_instance"
    # A label pattern whose files have no prediction: one clear error, no summary written.
    args[4] = str(inputs / "vol_*_vesicle_ins.h5")  # the TIFF input has no label: fine
    (inputs / "vol_other1_vesicle_ins.h5").write_bytes(b"")
    out.unlink()
    assert main(args) == 2
    assert "no prediction with the same wildcard part" in capsys.readouterr().err
    assert not out.exists()


def test_data_test_patterns_are_held_out_of_training(
    em: tuple[Path, dict[str, ModelRef]], tmp_path: Path
) -> None:
    data, refs = em
    cfg = refs["rsunet"].config.data
    [item] = held_out_items(cfg)
    assert item["case"] == "vol_test1_im" and item["mask"].endswith("test/vol_test1_mask.h5")
    # A test pattern that also matches training files takes them out of training.
    same = {"image": "vol2_im.h5", "label": "vol2_vesicle_ins.h5"}
    items = [{"case": f"vol{i}_im", "image": str(data / f"vol{i}_im.h5")} for i in (1, 2)]
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    assert [i["case"] for i in exclude_test(items, {**plain, "test": same})] == ["vol1_im"]
    with pytest.raises(PredictInputError, match=r"\{image: \.\.\., label: \.\.\., mask"):
        held_out_items({**plain, "test": {"images": "test"}})
