"""The diffusion recipe's parts against reference computations on fixed tensors and weights:
the DDIM timesteps and chain of improved-diffusion (the MedSegDiff group's sampler), the
FF-Parser of the official MedSegDiff and of lucidrains' med-seg-diff-pytorch, the official
calibration loss and "staple" fusion, ORGMedSegDiff's wiring, the group's slice-wise Dice.

The references are small pieces of the cited sources transcribed here (the sources are not
dependencies): openai/improved-diffusion @ 1bc7bbb (``respace.py``, ``gaussian_diffusion.py``),
MedicineToken/MedSegDiff @ b4aee37 (``guided_diffusion/unet.py``, ``utils.py``,
``gaussian_diffusion.py``, ``train_util.py``), lucidrains/med-seg-diff-pytorch @ 618e6a4, and
minanessiem/medseg-diffusion_ISLES24 @ 58ef119 (``src/metrics/metrics.py``,
``src/losses/segmentation_losses.py``). The literal timestep lists were printed by
improved-diffusion's own ``space_timesteps`` (/work/research/medsegdiff.md, section 1e).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler
from omegaconf import OmegaConf

from recipes.components.diffusion.losses import DiffusionLoss
from recipes.components.diffusion.noise import build_schedulers
from recipes.components.diffusion.slice_dice import SliceDice
from recipes.components.diffusion.spacing import sampling_timesteps, space_timesteps
from recipes.components.diffusion.validation import fuse
from recipes.components.models.nets.medsegdiff import FFParser
from recipes.components.models.nets.org_medsegdiff import Highway, ORGMedSegDiff

# improved-diffusion space_timesteps(1000, "ddim50") and (1000, "50"), ascending.
DDIM50 = list(range(0, 1000, 20))
SECTIONS50 = [
    0, 20, 41, 61, 82, 102, 122, 143, 163, 183, 204, 224, 245, 265, 285, 306, 326, 347, 367,
    387, 408, 428, 449, 469, 489, 510, 530, 550, 571, 591, 612, 632, 652, 673, 693, 714, 734,
    754, 775, 795, 816, 836, 856, 877, 897, 917, 938, 958, 979, 999,
]  # fmt: skip


def test_the_50_timesteps_equal_the_reference_spacings() -> None:
    assert sampling_timesteps(1000, 50, "leading").tolist() == DDIM50[::-1]
    assert sampling_timesteps(1000, 50, "linspace").tolist() == SECTIONS50[::-1]
    assert sampling_timesteps(1000, 50, "trailing").tolist() == list(range(999, 0, -20))
    assert sorted(space_timesteps(1000, "ddim50")) == DDIM50
    # improved-diffusion's "50" is MONAI's own set_timesteps(50), element for element
    monai = DDIMScheduler(num_train_timesteps=1000)
    monai.set_timesteps(50)
    assert monai.timesteps.tolist() == SECTIONS50[::-1]
    # several sections, each strided on its own (the docstring's example: 300 in 3 parts)
    kept = sorted(space_timesteps(300, [10, 15, 20]))
    assert len(kept) == 45 and kept[:2] == [0, 11] and kept[9] == 99 and kept[10] == 100
    assert kept[-1] == 299
    with pytest.raises(ValueError, match="no integer stride"):
        sampling_timesteps(1000, 49, "leading")
    with pytest.raises(ValueError, match="trailing, leading, linspace"):
        sampling_timesteps(1000, 50, "ddim")


def _cosine_alpha_bar(steps: int) -> np.ndarray:
    """improved-diffusion's get_named_beta_schedule("cosine") in float64, cumulated."""
    f = [math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(steps + 1)]
    betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(steps)])
    return np.cumprod(1 - betas)


def _improved_ddim(
    x: torch.Tensor, kept: list[int], eps_fn, clip: bool, eta: float, g: torch.Generator
) -> torch.Tensor:
    """improved-diffusion's SpacedDiffusion.ddim_sample_loop (gaussian_diffusion.py
    ddim_sample): to the previous kept timestep, eps re-derived from the clipped x_0, sigma by
    eq. 16 (0 at the last step); float64, the noise drawn from ``g`` once a step."""
    ab = _cosine_alpha_bar(1000)
    order = kept[::-1]
    for i, t in enumerate(order):
        a_t = ab[t]
        a_p = ab[order[i + 1]] if i + 1 < len(order) else 1.0
        eps = eps_fn(x, t)
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        x = x0 * math.sqrt(a_p) + math.sqrt(1 - a_p - sigma**2) * eps
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=g).double()
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_the_linspace_chain_is_improved_diffusions_ddim(eta: float) -> None:
    """The group's sampler ("50" respacing, clipping, eps from the clipped x_0) on an
    analytic denoiser: our DDIM equals improved-diffusion's to float32 precision; MONAI's
    own step (back T//n = 20 where the gap is 21, the network's eps kept) does not."""
    torch.manual_seed(0)
    cond = torch.randn(2, 1, 8, 8, dtype=torch.float64)

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        return 0.4 * x + 0.3 * torch.tanh(cond) * (1 - t / 1000) + 0.1 * t / 1000

    x_t = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    ref = _improved_ddim(
        x_t.clone(), SECTIONS50, eps_fn, True, eta, torch.Generator().manual_seed(3)
    )
    dcfg = OmegaConf.create(
        {"timesteps": 1000, "noise_schedule": "cosine", "clip_sample": True, "sampler": "ddim",
         "prediction_type": "epsilon", "sampling_steps": 50, "timestep_spacing": "linspace",
         "eps_from_clipped_x0": True}
    )  # fmt: skip
    _, ours = build_schedulers(dcfg)
    monai = DDIMScheduler(num_train_timesteps=1000, schedule="cosine", clip_sample=True)
    monai.set_timesteps(50)
    x, y, g = x_t.float(), x_t.float(), torch.Generator().manual_seed(3)
    for t in ours.timesteps.tolist():
        x, _ = ours.step(eps_fn(x.double(), t).float(), t, x, eta=eta, generator=g)
        y, _ = monai.step(eps_fn(y.double(), t).float(), t, y)
    scale = float(ref.abs().max())
    assert float((x.double() - ref).abs().max()) < 1e-4 * scale
    assert float((y.double() - ref).abs().max()) > 1e-2 * scale


def _official_ffparser(x: torch.Tensor, complex_weight: torch.Tensor) -> torch.Tensor:
    """FFParser.forward of the official MedSegDiff (guided_diffusion/unet.py)."""
    _, _, h, w = x.shape
    spectrum = torch.fft.rfft2(x.to(torch.float32), dim=(2, 3), norm="ortho")
    spectrum = spectrum * torch.view_as_complex(complex_weight)
    return torch.fft.irfft2(spectrum, s=(h, w), dim=(2, 3), norm="ortho")


def test_ff_parser_against_the_official_and_lucidrains() -> None:
    torch.manual_seed(0)
    c, h = 4, 16
    x = torch.randn(2, c, h, h)
    ours = FFParser(c, (h, h))
    assert float((ours(x) - x).abs().max()) < 1e-5  # identity at init (lucidrains' ones)
    # The official parameter, randn * 0.02 (its init: ~3 % of the input passes), loads 1:1.
    official = torch.randn(c, h, h // 2 + 1, 2) * 0.02
    with torch.no_grad():
        ours.weight.copy_(official)
    assert torch.equal(ours(x), _official_ffparser(x, official))
    assert 0.01 < float(ours(x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()) < 0.06
    # lucidrains: a real map M over the full fft2 spectrum, ifft2(fft2(x) * M).real, equals
    # ours with the map's Hermitian-symmetric part on the half spectrum.
    m = torch.rand(c, h, h) + 0.5
    lucidrains = torch.fft.ifft2(torch.fft.fft2(x) * m).real
    m_flip = torch.roll(torch.flip(m, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # M[-k]
    with torch.no_grad():
        ours.weight.zero_()
        ours.weight[..., 0] = (0.5 * (m + m_flip))[..., : h // 2 + 1]
    assert float((ours(x) - lucidrains).abs().max()) < 1e-5
    # the official init as an option (ORGMedSegDiff's highway): N(0, 0.02^2) per component
    drawn = FFParser(64, (32, 32), init_std=0.02).weight
    assert abs(float(drawn.std()) - 0.02) < 1e-3 and abs(float(drawn.mean())) < 1e-3


def test_calibration_loss_is_the_official_or_the_groups() -> None:
    """Fixed logits and mask, and outputs whose squared error is 0.5 and 0.25 per sample:
    the official total mean(loss_diff + 10 * mean_CHW((mask - sigmoid)^2)) (gaussian_diffusion
    training_losses_segmentation + train_util) and the group's 10 x BCE-with-logits."""
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 1:3, 1:3] = 1
    logits = torch.linspace(-3, 3, 32).view(2, 1, 4, 4)
    official = float(
        (torch.tensor([0.5, 0.25]) + 10 * ((mask - logits.sigmoid()) ** 2).mean((1, 2, 3))).mean()
    )
    assert official == pytest.approx(4.693097, abs=1e-5)
    out, target = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    target[0], target[1] = 0.5**0.5, 0.5
    total, parts = DiffusionLoss(calibration_weight=10, calibration_loss="mse")(
        out, target, None, mask, logits
    )
    assert float(total) == pytest.approx(official, abs=1e-5) and float(parts["mse"]) == 0.375
    total, parts = DiffusionLoss(calibration_weight=10, calibration_loss="bce")(
        out, target, None, mask, logits
    )
    bce = float(torch.nn.functional.binary_cross_entropy(logits.sigmoid(), mask))
    assert float(total) == pytest.approx(0.375 + 10 * bce, abs=1e-5)
    assert 10 * bce == pytest.approx(12.186675, abs=1e-4)
    with pytest.raises(ValueError, match="calibration head"):
        DiffusionLoss(calibration_weight=10)(out, target, None, mask, None)


def _official_staple(a: torch.Tensor) -> torch.Tensor:
    """utils.staple of the official MedSegDiff: one majority-vote reweighting pass."""
    mvres = a.sum(0, keepdim=True) / a.size(0)
    res = torch.cat([s * mvres for s in a], 0)
    return res.sum(0, keepdim=True) / res.size(0)


def test_staple_fusion_is_the_official_one() -> None:
    torch.manual_seed(0)
    members = torch.rand(5, 2, 1, 4, 4)  # 5 samples of 2 windows
    official = _official_staple(members)[0]
    ours = fuse(members.transpose(0, 1), "staple")
    assert float((ours - official).abs().max()) < 1e-6
    assert torch.allclose(fuse(members.transpose(0, 1), "mean"), members.mean(0))


TINY = {
    "channels": (16, 16, 32, 32),
    "attention_levels": (False, False, False, True),
    "num_head_channels": 32,
    "norm_num_groups": 8,
    "highway_features": 4,
    "highway_pools": 3,
}


def test_org_medsegdiff_wiring_v1_gates_and_new_detaches() -> None:
    """v1: the main U-Net's features (hence x_t) gate the highway, so the calibration map
    depends on x_t; new: the highway sees the image only and its anchors are detached, so
    the noise prediction sends no gradient into it."""
    torch.manual_seed(0)
    image, t = torch.randn(2, 2, 32, 32), torch.tensor([10, 900])
    x1, x2 = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    v1 = ORGMedSegDiff(32, 2, version="v1", **TINY).eval()
    new = ORGMedSegDiff(32, 2, version="new", **TINY).eval()
    with torch.no_grad():
        assert not torch.allclose(v1(x1, t, image)[1], v1(x2, t, image)[1])
        assert torch.equal(new(x1, t, image)[1], new(x2, t, image)[1])
    eps, cal = new(x1, t, image)
    eps.sum().backward()
    assert all(p.grad is None for p in new.highway.parameters())
    assert any(p.grad is not None for p in new.unet.parameters())
    cal.sum().backward()
    assert all(p.grad is not None for p in new.highway.encoder.parameters())
    with pytest.raises(ValueError, match="highway_pools must be len"):
        ORGMedSegDiff(32, 2, version="v1", **{**TINY, "highway_pools": 2})
    with pytest.raises(ValueError, match="4 x highway_features must equal"):
        ORGMedSegDiff(32, 2, version="new", **{**TINY, "highway_features": 8})


def test_org_medsegdiff_highway_is_nnunets_generic_unet() -> None:
    """Parameter counts of the official configuration (256^2, 2 image channels), checked
    against the official classes on this commit: Generic_UNet(2, 32, 1, 5, highway=True)
    has 16,854,308 parameters and UNetModel_v1preview's U-Net (without its highway) 113,672,066
    with its 2-channel output (1,153 more than one channel). Run on identical weights, the
    official highway's calibration map and anchors equal this Highway's exactly (0.0)."""
    with torch.device("meta"):
        highway = Highway(2, 32, 5, [256, 256], gate_channels=[128, 128, 256, 256])
        net = ORGMedSegDiff(256, 2, version="v1")
    assert sum(p.numel() for p in highway.parameters()) == 16_854_308
    assert sum(p.numel() for p in net.highway.parameters()) == 16_854_308
    assert sum(p.numel() for p in net.unet.parameters()) == 113_672_066 - 1_153
    assert highway.widths == [32, 64, 128, 256, 480]


def test_slice_dice_follows_the_groups_dice_2d_fg() -> None:
    """Three slices (z): a lesion half found, an empty slice predicted empty, an empty slice
    with a false positive. The group's rule counts the first only; ``score`` counts all."""
    label, pred = torch.zeros(1, 1, 4, 4, 3), torch.zeros(1, 1, 4, 4, 3)
    label[0, 0, :2, :2, 0] = 1  # 4 voxels
    pred[0, 0, :1, :2, 0] = 1  # 2 of them
    pred[0, 0, 3, 3, 2] = 1  # a false positive on a healthy slice
    skip, score = SliceDice("skip"), SliceDice("score")
    skip(pred, label, 2)
    score(pred, label, 2)
    dice = (2 * 2 + 1e-6) / (2 + 4 + 1e-6)
    assert skip.count == 1 and skip.mean() == pytest.approx(dice)
    assert score.count == 3 and score.mean() == pytest.approx((dice + 1 + 0) / 3)
    empty = SliceDice("skip")
    empty(pred, torch.zeros_like(label), 2)
    assert math.isnan(empty.mean())
