"""RSUNet is PyTorch Connectomics' RSUNet: parameter counts and shapes from PyTC's code.

The table is derived from PyTC's ``connectomics/models/arch/rsunet.py`` (PytorchConnectomics/
pytorch_connectomics @ 4888f394ef291d149621359be15c1ed907fe05c8; zudi-lin/pytorch_connectomics
@ 066f1c20 is the same network): ConvBlock = norm-act-conv, pre-activation ResBlock,
norm-act-conv (bias-free 3x3x3), MaxPool (1, 2, 2) at every level, fixed bilinear up + bias-free
1x1x1 projection + additive skip, final norm-act + biased 1x1x1 head, deep-supervision heads
(biased 1x1x1) on the 4 deepest decoder inputs. Counts at in 1 channel, ReLU:

    filters                       norm      out  DS    parameters
    [32, 64, 128, 256, 512]       batch     3    no    42,570,245   hydra-lv's model.filters
    [32, 64, 128, 256, 512]       batch     3    yes   42,573,137   + 4 heads (512..64 -> 3)
    [28, 36, 48, 64, 80]          batch     1    no     2,431,243   PyTC v1's FILTERS
    [28, 36, 48, 64, 80]          batch     3    no     2,431,301
    [28, 36, 48, 64, 80]          batch     3    yes    2,431,997
    [28, 36, 48, 64, 80]          instance  1    no     2,427,889   (no affine parameters)
    [28, 36, 48, 64, 80]          group     1    no     2,431,243
    [32, 64, 128, 256]            batch     3    no    10,583,045   tutorials/rsunet_lucchi++
    [16, 32, 64, 128]             batch     1    no     2,647,267   the class's own example

(/work/research/rsunet.md has the layer-by-layer breakdown; the same module was also checked
against PyTC's own, weights copied, outputs equal to 1e-13 in float64.)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from recipes.components.models.build import build_model
from recipes.components.models.nets.rsunet import RSUNet
from recipes.components.models.sizes import effective_model_config
from recipes.components.training.losses import build_loss
from runner.recipe import Recipe

PYTC_COUNTS = [
    ([32, 64, 128, 256, 512], "batch", 3, False, 42_570_245),
    ([32, 64, 128, 256, 512], "batch", 3, True, 42_573_137),
    ([28, 36, 48, 64, 80], "batch", 1, False, 2_431_243),
    ([28, 36, 48, 64, 80], "batch", 3, False, 2_431_301),
    ([28, 36, 48, 64, 80], "batch", 3, True, 2_431_997),
    ([28, 36, 48, 64, 80], "instance", 1, False, 2_427_889),
    ([28, 36, 48, 64, 80], "group", 1, False, 2_431_243),
    ([32, 64, 128, 256], "batch", 3, False, 10_583_045),
    ([16, 32, 64, 128], "batch", 1, False, 2_647_267),
]


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("features", "norm", "out", "ds", "expected"), PYTC_COUNTS)
def test_parameter_counts_are_pytcs(
    features: list[int], norm: str, out: int, ds: bool, expected: int
) -> None:
    with torch.device("meta"):
        net = RSUNet(1, out, features, norm=norm, deep_supervision=ds)
    assert _count(net) == expected


def test_the_recipe_builds_hydra_lvs_network_and_the_smaller_sizes() -> None:
    recipe = Recipe.load("segmentation")
    cfg = recipe.compose(["model=rsunet", "task=em_instance", "data=em_vesicles"])
    assert cfg.model.features == [32, 64, 128, 256, 512] and cfg.model.norm == "batch"
    with torch.device("meta"):
        assert _count(build_model(cfg.model)) == 42_570_245
    small = effective_model_config(OmegaConf.merge(cfg.model, {"size": "small"}))
    assert list(small.features) == [32, 64, 128, 256]  # PyTC's rsunet_lucchi++ tutorial
    with torch.device("meta"):
        assert _count(build_model(small)) == 10_583_045


@pytest.mark.parametrize(
    ("zyx", "xyz"), [((24, 96, 96), (96, 96, 24)), ((32, 128, 128), (128, 128, 32))]
)
def test_shapes_at_the_studys_patches_and_the_deep_supervision_heads(
    zyx: tuple[int, int, int], xyz: tuple[int, int, int]
) -> None:
    """PyTC's (1, 2, 2) pooling, here (2, 2, 1): z is never pooled; the heads see the
    bottleneck (1/16 in-plane), then 1/8, 1/4, 1/2 (PyTC's ds_0 .. ds_3)."""
    with torch.device("meta"):
        net = RSUNet(1, 3, [32, 64, 128, 256, 512], deep_supervision=True)
        outs = net.train()(torch.empty(1, 1, *xyz))
        plain = net.eval()(torch.empty(1, 1, *xyz))
    x, _, z = xyz
    assert tuple(plain.shape) == (1, 3, *xyz)  # eval: the full-resolution output only
    assert [tuple(o.shape[2:]) for o in outs] == [
        xyz,
        *((x // f, x // f, z) for f in (16, 8, 4, 2)),
    ]
    assert zyx[0] == z


def test_up_sampling_is_fixed_bilinear_and_skips_add() -> None:
    net = RSUNet(1, 1, [4, 8], norm="none")
    up = net.up[0]
    assert not any(p is up.up.weight for p in net.parameters())  # a buffer, never trained
    # The Caffe kernel 0.25, 0.75, 0.75, 0.25 in x and y, one tap in z; an edge sees one
    # neighbour (PyTC's zero-padded transposed convolution).
    ones = up.up(torch.ones(1, 8, 3, 3, 2))
    assert ones.shape == (1, 8, 6, 6, 2)
    assert torch.allclose(ones[0, 0, 1:-1, 1:-1], torch.ones(4, 4, 2))
    assert ones[0, 0, 0, 0, 0].item() == pytest.approx(0.75 * 0.75)
    assert up.proj.kernel_size == (1, 1, 1) and up.proj.bias is None
    assert net.pools[0].kernel_size == (2, 2, 1)


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
def test_every_norm_and_dropout_train(norm: str) -> None:
    torch.manual_seed(0)
    net = RSUNet(1, 3, [4, 8, 16], norm=norm, act="leakyrelu", dropout=0.2).train()
    x = torch.randn(2, 1, 16, 16, 4)
    before = x.clone()
    out = net(x)
    out.square().mean().backward()
    assert torch.equal(x, before)  # the input is never changed in place
    assert all(p.grad is not None for p in net.parameters())
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 5 and all(d.p == 0.2 for d in dropouts)  # one per residual block
    assert not any(isinstance(m, torch.nn.Dropout) for m in RSUNet(1, 3, [4, 8]).modules())


def test_bad_options_say_what_is_valid() -> None:
    with pytest.raises(
        ValueError, match="norm='layer'; choose one of batch, group, instance, none"
    ):
        RSUNet(1, 3, [4, 8], norm="layer")
    with pytest.raises(ValueError, match="act='gelu'; choose one of relu, leakyrelu, prelu, elu"):
        RSUNet(1, 3, [4, 8], act="gelu")


def _em_loss(**over: Any) -> torch.nn.Module:
    cfg = OmegaConf.create(
        {"name": "em_instance", "weights": [1.0, 0.5, 2.0], "start_steps": [0, 0, 0],
         "warmup_steps": [0, 0, 0], **over}
    )  # fmt: skip
    return build_loss(cfg, 2)


def test_deep_supervision_trains_every_head_with_pytcs_weights() -> None:
    """[full, bottleneck, 1/8, 1/4, 1/2] with MONAI's exp weights: 1, 0.5, 0.25, 0.125,
    0.0625 (PyTC's current weights, deepest head 0.5); the seed-era weights (bottleneck 0)
    are a list; a DDP-safe graph either way (every head in it)."""
    torch.manual_seed(0)
    net = RSUNet(1, 3, [4, 8, 8, 8, 8], deep_supervision=True).train()
    x = torch.randn(2, 1, 32, 32, 4)
    target = torch.rand(2, 3, 32, 32, 4).round()
    outs = net(x)
    loss_fn = _em_loss()
    total = loss_fn(outs, target)
    parts = [loss_fn.inner(outs[0], target)] + [
        loss_fn.inner(o, torch.nn.functional.interpolate(target, o.shape[2:], mode="nearest-exact"))
        for o in outs[1:]
    ]
    expected = sum(w * p for w, p in zip([1, 0.5, 0.25, 0.125, 0.0625], parts, strict=True))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    seed_era = _em_loss(deep_supervision_weights=[1.0, 0.0, 0.5, 0.25, 0.125])(outs, target)
    expected = sum(w * p for w, p in zip([1, 0.0, 0.5, 0.25, 0.125], parts, strict=True))
    assert seed_era.item() == pytest.approx(expected.item(), rel=1e-5)
    seed_era.backward()
    assert all(p.grad is not None for p in net.parameters())
