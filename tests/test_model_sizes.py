"""Published model sizes by default, ``model.size`` to shrink them, DynUNet planned as nnU-Net.

Published parameter counts (in 1 channel, 14 classes, as the papers count on BTCV, unless
said otherwise), compared within 1 % (2 % for MedNeXt, whose paper rounds to 0.1M):
UNETR 92.58M (Hatamizadeh et al. 2022, Table 1), Swin UNETR 62.19M (Hatamizadeh et al.
2022, BTCV table), MedNeXt-B k3 10.5M and k5 11.0M (Roy et al. 2023, Table 1), nnU-Net's
3d_fullres for a 128^3 patch (6 stages, 32..320) ~31.2M (nnU-Net revisited, Isensee et al.
2024: "nnU-Net (org.)" 31M; 3 % here). MeshNet-26 has no count we can cite: it is counted
from its layer formula exactly. RSUNet's counts are PyTorch Connectomics' (tests/test_rsunet.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from recipes.components.models.build import MODELS, build_model
from recipes.components.models.sizes import (
    PRESETS,
    SIZES,
    apply_size,
    effective_model_config,
    nnunet_plan,
)
from recipes.segmentation import CONFIG_DIR

MODEL_DIR = Path(CONFIG_DIR) / "model"


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((MODEL_DIR / f"{name}.yaml").read_text())


def _cfg(name: str, **over: Any) -> dict[str, Any]:
    """The model's YAML with its interpolations filled in by hand (3D)."""
    cfg = _yaml(name)
    cfg.update(spatial_dims=3, in_channels=1, out_channels=14)
    if "img_size" in cfg:
        cfg["img_size"] = [96, 96, 96]
    if name == "dynunet":
        cfg.update(patch_size=[128, 128, 128], spacing=None)
    cfg.update(over)
    return cfg


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_every_yaml_is_its_published_preset() -> None:
    assert set(PRESETS) == set(MODELS)
    for name, presets in PRESETS.items():
        cfg = _yaml(name)
        assert cfg["size"] == "published"
        assert set(presets) == set(SIZES)
        for key, value in presets["published"].items():
            assert cfg[key] == value, (name, key)
        for size in SIZES:  # every preset key is a key of the model
            assert set(presets[size]) <= set(cfg), (name, size)


def test_size_presets_shrink_and_explicit_keys_win() -> None:
    tiny = apply_size("segresnet", {"size": "tiny", "init_filters": 32})
    assert tiny == {"init_filters": 8}
    full = [1, 2, 4, 8, 16, 8, 4, 2, 1]
    explicit = apply_size("meshnet", {"size": "tiny", "width": 4, "dilations": full})
    assert explicit == {"width": 4, "dilations": [1, 2, 4, 8, 4, 2, 1]}  # width set: kept
    assert apply_size("meshnet", {"width": 26}) == {"width": 26}  # published: untouched
    with pytest.raises(ValueError, match=r"model.size='tinny'.*published, small, tiny.*'tiny'"):
        apply_size("unet", {"size": "tinny"})


def test_the_effective_config_is_what_is_built() -> None:
    """What a run logs as params: the preset's values, not the YAML's published ones."""
    for name, size in (("segresnet", "tiny"), ("dynunet", "published"), ("meshnet", "small")):
        cfg = OmegaConf.create(_cfg(name, size=size, out_channels=2))
        effective = effective_model_config(cfg)
        assert effective.size == size
        for key, value in PRESETS[name][size].items():
            assert effective[key] == value or (value is None and effective[key] is not None)
        torch.manual_seed(0)
        a = build_model(cfg).state_dict()
        torch.manual_seed(0)
        b = build_model(effective).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert effective_model_config(OmegaConf.create(_cfg("dynunet")))["filters"][-1] == 320


def test_smaller_sizes_have_fewer_parameters() -> None:
    for name in ("segresnet", "unet", "basic_unet", "attention_unet", "meshnet", "mednext"):
        counts = [_count(build_model(_cfg(name, size=s, out_channels=2))) for s in SIZES]
        assert counts[0] > counts[1] > counts[2], (name, counts)


def test_nnunet_plan_follows_the_patch_and_spacing() -> None:
    iso = nnunet_plan([128, 128, 128], None)
    assert iso["filters"] == [32, 64, 128, 256, 320, 320]
    assert iso["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5  # bottom 4^3
    assert iso["upsample_kernel_size"] == iso["strides"][1:]
    # SegTHOR's 2D: 256^2 -> 4^2 in 6 halvings, up to 512 filters as nnU-Net's 2d.
    flat = nnunet_plan([256, 256], [1.0, 1.0])
    assert flat["filters"] == [32, 64, 128, 256, 512, 512, 512]
    # Anisotropic (z 3x coarser): z waits, with 1-kernels, until x and y have caught up.
    aniso = nnunet_plan([128, 128, 32], [1.0, 1.0, 3.0])
    assert aniso["strides"][1] == [2, 2, 1] and aniso["kernel_size"][0] == [3, 3, 1]
    assert aniso["strides"][2] == [2, 2, 2] and aniso["kernel_size"][1] == [3, 3, 3]
    assert aniso["strides"][-1] == [2, 2, 1]  # z reached 4 voxels first: x, y go on alone


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "over", "published", "tolerance"),
    [
        ("unetr", {}, 92.58e6, 0.01),
        ("swin_unetr", {}, 62.19e6, 0.01),
        ("mednext", {"deep_supervision": False}, 10.5e6, 0.02),
        ("mednext", {"deep_supervision": False, "kernel_size": 5}, 11.0e6, 0.02),
        ("dynunet", {"in_channels": 4, "out_channels": 3}, 31.2e6, 0.03),
    ],
)
def test_published_parameter_counts(
    name: str, over: dict[str, Any], published: float, tolerance: float
) -> None:
    assert _count(build_model(_cfg(name, **over))) == pytest.approx(published, rel=tolerance)


def test_meshnet_count_is_its_formula() -> None:
    mesh = build_model(_cfg("meshnet", out_channels=2))
    w, layers = 26, 9  # conv weights + bias + BatchNorm (2 per channel) per layer, 1x1 head
    expected = (1 * w * 27 + w + 2 * w) + (layers - 1) * (w * w * 27 + w + 2 * w) + w * 2 + 2
    assert _count(mesh) == expected


# (model, in channels, patch): each study's models at its patch sizes (matrix/*.yaml).
EM_MODELS = ("unet", "basic_unet", "rsunet", "mednext")
STUDIES = [
    *((m, 2, [256, 256, 256]) for m in ("segresnet", "unet", "dynunet", "meshnet", "mednext")),
    *((m, 1, p) for m in EM_MODELS for p in ([96, 96, 24], [128, 128, 32])),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "channels", "patch"), STUDIES)
def test_published_models_take_the_studies_patches(
    name: str, channels: int, patch: list[int]
) -> None:
    """Shapes at the full study patch on the meta device (no memory, no compute: 256^3 on a
    CPU takes minutes per model), then a real CPU forward/backward at 1/8 the sides (>= 32)."""
    cfg = _cfg(name, in_channels=channels, out_channels=2)
    if name == "dynunet":
        cfg["patch_size"] = patch
    with torch.device("meta"):
        out = build_model(cfg).eval()(torch.empty(1, channels, *patch))
    assert tuple(out.shape) == (1, 2, *patch)
    small = [max(32, s // 8) for s in patch]  # the published U-Nets need 2 voxels at the bottom
    if name == "dynunet":
        cfg["patch_size"] = small
    torch.manual_seed(0)
    net = build_model(cfg).train()
    out = net(torch.randn(1, channels, *small))
    first = out[0] if isinstance(out, (list, tuple)) else out
    first.float().mean().backward()
    assert torch.isfinite(first).all()
    assert sum(p.grad is not None for p in net.parameters()) > 0


@pytest.mark.slow
def test_segthor_dynunet_is_nnunet_2d() -> None:
    cfg = _cfg("dynunet", spatial_dims=2, out_channels=5, patch_size=[256, 256])
    with torch.device("meta"):
        net = build_model(cfg).eval()
        assert tuple(net(torch.empty(1, 1, 256, 256)).shape) == (1, 5, 256, 256)
    assert list(net.filters) == [32, 64, 128, 256, 512, 512, 512]
