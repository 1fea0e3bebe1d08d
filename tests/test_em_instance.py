"""The em_instance task's parts: targets from instance labels, the seeded watershed, the
instance metrics against scikit-image, the masked three-head loss, and masked semantic
losses and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from monai.losses import DiceCELoss
from omegaconf import DictConfig
from skimage.metrics import adapted_rand_error, variation_of_information

from recipes.components.data.em_demo_data import make_volume
from recipes.components.data.em_targets import instance_targets
from recipes.components.training.instances import decode_instances, instance_scores
from recipes.components.training.losses import DeepSupervised, build_loss, masked_call
from recipes.components.training.metrics import SegMetrics
from recipes.components.training.validation import check_task
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=list(overrides))


def test_the_skimage_convention_equals_scikit_image_on_known_instances() -> None:
    """task.em_metrics=skimage (the default, cremi, is tested in test_em_metrics.py)."""
    truth = np.zeros((10, 10, 4), np.int64)
    truth[1:4, 1:4] = 1
    truth[5:9, 1:4] = 2
    truth[1:9, 6:9] = 3
    pred = truth.copy()
    pred[truth == 2] = 1  # instances 1 and 2 merged
    pred[5:9, 6:9] = 7  # instance 3 split in two
    pred[0, 0] = 9  # a false positive in the background (ignored by adapted Rand)
    scores = instance_scores(pred, truth, convention="skimage")
    are, precision, recall = adapted_rand_error(truth, pred)
    assert scores["adapted_rand_error"] == pytest.approx(are)
    assert scores["adapted_rand_precision"] == pytest.approx(precision)
    assert scores["adapted_rand_recall"] == pytest.approx(recall)
    split, merge = variation_of_information(truth, pred)
    assert (scores["voi_split"], scores["voi_merge"]) == pytest.approx((split, merge))
    assert split > 0 and merge > 0
    # By hand: 36 + 48 + 96 = 180 labelled voxels; pairs of distinct voxels (n^2 - n, as
    # scikit-image counts) together in truth, in the prediction, in both.
    true_pairs = 36**2 + 48**2 + 96**2 - 180
    pred_pairs = 84**2 + 48**2 + 48**2 - 180
    shared = 36**2 + 3 * 48**2 - 180
    p, r = shared / pred_pairs, shared / true_pairs
    assert scores["adapted_rand_error"] == pytest.approx(1 - 2 * p * r / (p + r))
    assert instance_scores(truth, truth, convention="skimage")["adapted_rand_error"] == 0.0
    # A mask: only its voxels count, exactly as scikit-image on those voxels.
    mask = np.zeros_like(truth)
    mask[:, :5] = 1
    masked = instance_scores(pred, truth, mask, convention="skimage")
    keep = mask > 0
    assert masked["adapted_rand_error"] == pytest.approx(
        adapted_rand_error(truth[keep], pred[keep])[0]
    )


def test_targets_from_instances() -> None:
    instances = np.zeros((20, 20, 6), np.int64)
    instances[2:10, 2:10, 1:5] = 4
    instances[10:18, 2:10, 1:5] = 9  # touches instance 4 in-plane
    instances[2:10, 12:18, 0:3] = 2
    instances[2:10, 12:18, 3:6] = 3  # stacked on instance 2 across sections
    binary, boundary, distance = instance_targets(instances, (8.0, 8.0, 30.0))
    assert np.array_equal(binary, instances > 0)
    assert boundary[9, 5, 2] and boundary[10, 5, 2]  # both sides of the in-plane contact
    assert boundary[5, 15, 2] and boundary[5, 15, 3]  # both sides of the contact in z
    assert not boundary[5, 5, 2] and not boundary[instances == 0].any()
    for label in (2, 3, 4, 9):
        inside = distance[instances == label]
        assert inside.max() == pytest.approx(1.0) and inside.min() > 0
    assert distance[instances == 0].max() == 0


def test_watershed_recovers_touching_vesicles_from_their_targets() -> None:
    """Decoding inverts the targets: on the synthetic vesicles (touching ones included) the
    ideal maps give instances with an adapted Rand error below 0.02."""
    errors = []
    for index in range(3):
        _, instances, mask = make_volume(0, index)
        xyz, keep = instances.transpose(2, 1, 0), mask.transpose(2, 1, 0)
        pred = decode_instances(instance_targets(xyz, (8.0, 8.0, 30.0)))
        errors.append(instance_scores(pred, xyz, keep)["adapted_rand_error"])
    assert max(errors) < 0.02, errors


def _em_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    _, instances, mask = make_volume(0, 1, (8, 24, 24))
    target = torch.from_numpy(instance_targets(instances.transpose(2, 1, 0)))[None]
    mask_t = torch.from_numpy(mask.transpose(2, 1, 0).astype(np.float32))[None, None]
    return torch.randn(1, 3, 24, 24, 8, requires_grad=True), target, mask_t


def test_em_loss_weights_heads_and_ignores_voxels_outside_the_mask() -> None:
    cfg = _compose("task=em_instance")
    assert cfg.loss.name == "em_instance" and cfg.model.out_channels == 3
    loss_fn = build_loss(cfg.loss, 2)
    logits, target, mask = _em_batch()
    loss = loss_fn(logits, target, mask)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    outside = (mask == 0).expand_as(logits)
    assert bool(outside.any()) and float(logits.grad[outside].abs().max()) == 0.0
    changed = logits.detach().clone()
    changed[outside] = 50.0
    assert loss_fn(changed, target, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    # Per-term weights: the sum of each head alone times its weight (a YAML string works too).
    heads = []
    for one in ("[1,0,0]", "[0,1,0]", "[0,0,1]"):
        cfg.loss.weights = one
        heads.append(build_loss(cfg.loss, 2)(logits, target, mask).item())
    assert loss.item() == pytest.approx(1.0 * heads[0] + 0.5 * heads[1] + 2.0 * heads[2], rel=1e-5)
    # Deep supervision (MedNeXt-style coarser outputs): label and mask resized alike.
    coarse = torch.nn.functional.avg_pool3d(logits.detach(), 2)
    both = float(loss_fn([logits.detach(), coarse], target, mask))
    assert both > loss.item() * 0.99


def test_any_loss_and_metric_count_only_masked_voxels() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8, 4)
    label = (torch.rand(2, 1, 8, 8, 4) > 0.6).float()
    mask = torch.zeros(2, 1, 8, 8, 4)
    mask[:, :, :5] = 1
    loss = DiceCELoss(softmax=True, to_onehot_y=True, batch=True, include_background=False)
    inside = masked_call(loss, logits, label, mask)
    flat = lambda t: t[:, :, :5].movedim(1, -1).reshape(-1, t.shape[1]).T[None]  # noqa: E731
    assert float(inside) == pytest.approx(float(loss(flat(logits), flat(label))))
    assert float(DeepSupervised(loss)(logits, label, mask)) == pytest.approx(float(inside))
    metric, cropped = SegMetrics(2), SegMetrics(2)
    metric(logits, label, None, mask)
    cropped(logits[:, :, :5], label[:, :, :5], None)
    assert float(metric.aggregate()[0]) == pytest.approx(float(cropped.aggregate()[0]))


def test_task_and_loss_must_agree() -> None:
    assert check_task(_compose()) == "semantic"
    assert check_task(_compose("task=em_instance", "model=mednext")) == "em_instance"
    with pytest.raises(ValueError, match=r"loss=dice_ce .*pick loss=em_instance"):
        check_task(_compose("task=em_instance", "loss=dice_ce"))
    assert check_task(_compose("loss=em_instance")) == "em_instance"  # the loss sets the task
    with pytest.raises(ValueError, match="loss=em_instance is the loss of task=em_instance"):
        check_task(_compose("loss=em_instance", "task.name=semantic"))
