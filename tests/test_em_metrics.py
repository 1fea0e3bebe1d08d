"""EM instance metrics in the field's convention (CREMI / PyTorch Connectomics / SNEMI3D) by
default and scikit-image's on request, each against a reference computed independently here:
pairs of voxels counted one by one, entropies from counted voxels."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from scipy.ndimage import binary_erosion
from skimage.metrics import adapted_rand_error, variation_of_information

from recipes.components.training.instances import InstanceMetrics, instance_scores
from recipes.components.training.validation import check_task, metric_rules
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME


def _pairs_reference(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """SNEMI3D's adapted Rand error by counting ordered voxel pairs (self-pairs included)
    among the voxels of true objects: "together in the prediction" needs a predicted segment
    (> 0); a voxel the prediction leaves as background is a singleton, weighted 1/n as the
    CREMI / PyTC code weights it (n: every voxel)."""
    t, p = truth.ravel(), pred.ravel()
    n = t.size
    inside = t > 0
    t, p = t[inside], p[inside]
    same_truth = t[:, None] == t[None, :]
    same_pred = (p[:, None] == p[None, :]) & (p[:, None] > 0)
    singles = np.count_nonzero(p == 0) / n
    both = np.count_nonzero(same_truth & same_pred) + singles
    precision = both / (np.count_nonzero(same_pred) + singles)
    recall = both / np.count_nonzero(same_truth)
    return 1 - 2 * precision * recall / (precision + recall), precision, recall


def _entropy_reference(
    truth: np.ndarray, pred: np.ndarray, ignore_truth_background: bool
) -> tuple[float, float]:
    """(H(pred | truth), H(truth | pred)) in bits from voxel counts."""
    pairs = list(zip(truth.ravel().tolist(), pred.ravel().tolist(), strict=True))
    if ignore_truth_background:
        pairs = [(a, b) for a, b in pairs if a != 0]
    n = len(pairs)
    joint = Counter(pairs)
    of_truth = Counter(a for a, _ in pairs)
    of_pred = Counter(b for _, b in pairs)
    split = -sum(c / n * math.log2(c / of_truth[a]) for (a, _), c in joint.items())
    merge = -sum(c / n * math.log2(c / of_pred[b]) for (_, b), c in joint.items())
    return split, merge


def _instances(seed: int) -> np.ndarray:
    """Blocky instances in a small volume with background between them."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((6, 14, 14), np.int64)
    label = 0
    for z0 in (0, 3):
        for y0 in range(0, 14, 5):
            for x0 in range(0, 14, 5):
                if rng.random() < 0.8:
                    label += 1
                    vol[z0 : z0 + 3, y0 : y0 + 4, x0 : x0 + 4] = label
    return vol


def _perturbations(truth: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    merged = np.where(truth == 2, 1, truth)
    split = truth.copy()
    inside = np.flatnonzero(truth == 3)
    split.flat[inside[len(inside) // 2 :]] = 99  # object 3 cut in two
    eroded = np.zeros_like(truth)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1, 1, :] = in_plane[1, :, 1] = True
    for k in range(1, truth.max() + 1):  # background inside each object, as a watershed leaves
        eroded[binary_erosion(truth == k, in_plane)] = k
    extra = truth.copy()
    extra[(truth == 0) & (rng.random(truth.shape) < 0.2)] = 500  # false instances outside
    noisy = np.where(rng.random(truth.shape) < 0.05, rng.integers(0, 20, truth.shape), truth)
    return {"identity": truth.copy(), "merge": merged, "split": split, "eroded": eroded,
            "extra": extra, "noise": noisy}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
def test_cremi_convention_against_counted_pairs_and_entropies(seed: int) -> None:
    truth = _instances(seed)
    for name, pred in _perturbations(truth, seed).items():
        got = instance_scores(pred, truth)  # the default: cremi
        are, precision, recall = _pairs_reference(truth, pred)
        assert got["adapted_rand_error"] == pytest.approx(are, abs=1e-12), name
        assert got["adapted_rand_precision"] == pytest.approx(precision, abs=1e-12), name
        assert got["adapted_rand_recall"] == pytest.approx(recall, abs=1e-12), name
        split, merge = _entropy_reference(truth, pred, ignore_truth_background=True)
        assert got["voi_split"] == pytest.approx(split, abs=1e-12), name
        assert got["voi_merge"] == pytest.approx(merge, abs=1e-12), name
        # the skimage option: its own functions, and the same entropies over every voxel
        sk = instance_scores(pred, truth, convention="skimage")
        assert sk["adapted_rand_error"] == pytest.approx(adapted_rand_error(truth, pred)[0])
        split, merge = _entropy_reference(truth, pred, ignore_truth_background=False)
        assert (sk["voi_split"], sk["voi_merge"]) == pytest.approx((split, merge), abs=1e-12)
        assert (sk["voi_split"], sk["voi_merge"]) == pytest.approx(
            tuple(variation_of_information(truth, pred))
        )


def test_where_the_conventions_part() -> None:
    truth = np.zeros((4, 40, 40), np.int64)  # 16 objects of 4 x 8 x 8 voxels
    for k in range(16):
        y, x = 1 + 10 * (k // 4), 1 + 10 * (k % 4)
        truth[:, y : y + 8, x : x + 8] = k + 1
    cases = _perturbations(truth, 0)
    cremi = {k: instance_scores(p, truth) for k, p in cases.items()}
    sk = {k: instance_scores(p, truth, convention="skimage") for k, p in cases.items()}
    assert cremi["identity"]["adapted_rand_error"] == sk["identity"]["adapted_rand_error"] == 0
    # predicted background inside objects (what the watershed leaves): one segment spanning
    # every object for scikit-image, singletons for CREMI: 0.77 against 0.52 here
    assert sk["eroded"]["adapted_rand_error"] > cremi["eroded"]["adapted_rand_error"] + 0.2
    # false instances in the true background: free for CREMI's VI, a split for scikit-image
    assert cremi["extra"]["voi_split"] == 0 and sk["extra"]["voi_split"] > 0.1
    assert cremi["extra"]["adapted_rand_error"] == 0
    # merges and splits cost both
    assert cremi["merge"]["voi_merge"] > 0 and cremi["split"]["voi_split"] > 0


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=["task=em_instance", *overrides])


def test_the_convention_is_a_config_key_and_a_param() -> None:
    cfg = _compose("model=rsunet", "data.num_classes=2")
    assert cfg.task.em_metrics == "cremi"
    assert "CREMI" in metric_rules(cfg) and "nnU-Net" in metric_rules(cfg)
    skimage = _compose("model=rsunet", "data.num_classes=2", "task.em_metrics=skimage")
    assert "scikit-image" in metric_rules(skimage)
    with pytest.raises(ValueError, match=r"task\.em_metrics=.pytc.: choose one of cremi, skimage"):
        check_task(_compose("model=rsunet", "data.num_classes=2", "task.em_metrics=pytc"))
    with pytest.raises(ValueError, match="choose one of"):
        InstanceMetrics(convention="snemi")
