"""Predict label maps with trained diffusion cells, as validation scores them.

``predict(request)`` (the recipe's ``PREDICT`` entry) is the segmentation recipe's predict
(inputs checked before any model loads, nnU-Net-named inputs or the ``data.test`` cases,
files written only once every case is done, ``predict.json``) with a diffusion model in place
of a segmentation network: each case is preprocessed as validation volumes are, every slice
is covered by windows of ``training.patch_size`` (MONAI's ``sliding_window_inference``), each
window is sampled ``num_samples`` times with the cell's sampler (DDIM steps, spacing, eta),
the samples are fused (``fusion``: their mean, or the official MedSegDiff's "staple") into a
foreground probability, and that map goes back to the input's own grid (MONAI's ``Invertd``:
same shape, affine and orientation) before the threshold at 0.5. Several cells (``runner
predict --ensemble seeds``) average their fused maps.

The ``predict.*`` keys, their defaults taken from the cell's config so that the test split is
scored as validation scored the cell:

num_samples (``diffusion.num_samples``), fusion (``diffusion.fusion``: mean | staple)
    the ensemble per window;
seed (``diffusion.val_seed``)
    the noise: a case's draws are a function of the seed and its input file's name, so a
    prediction is the same on every run;
sw_batch_size (``training.val_batch_size`` / num_samples), sw_overlap (``training.sw_overlap``)
    windows per network call, their overlap;
skip_empty (``training.val_skip_empty``)
    all-zero windows are background without sampling;
amp
    ``train`` (the cell's ``training.amp``, as validation samples) | auto | bf16 | fp16 | fp32;
device
    ``auto`` | cpu | cuda | cuda:N.

There is no mirroring TTA (``--tta`` is refused): the ensemble of samples is the
diffusion model's own test-time ensemble.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose
from omegaconf import DictConfig, OmegaConf

from recipes.components.data.slices import slice_axis_of
from recipes.components.diffusion.models import build_denoiser
from recipes.components.diffusion.noise import build_schedulers
from recipes.components.diffusion.validation import FUSIONS, WindowPredictor
from recipes.components.testtime.inference import amp_for, case_pipeline, load_checkpoint
from recipes.components.testtime.inputs import ChannelMap
from recipes.contract import ModelRef, PredictInputError, PredictRequest, PredictResult
from recipes.segmentation import predict as segmentation

__all__ = ["DiffusionPredictor", "predict", "resolve_settings"]

SETTINGS: dict[str, Any] = {
    "num_samples": None,
    "fusion": None,
    "seed": None,
    "sw_batch_size": None,
    "sw_overlap": None,
    "skip_empty": None,
    "amp": "train",
    "device": "auto",
    "tta": False,
}
AMPS = ("train", "auto", "bf16", "fp16", "fp32")


def _bad(key: str, value: Any, valid: str) -> PredictInputError:
    return PredictInputError(f"predict.{key}={value!r}: {valid}")


def resolve_settings(cfg: DictConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults from the cell's config (module doc), then ``overrides`` (strings are read as
    YAML values, as on a command line); unknown keys and bad values name what is valid."""
    out = dict(SETTINGS)
    for raw, value in overrides.items():
        key = str(raw).removeprefix("predict.")
        if key not in SETTINGS:
            valid = ", ".join(f"predict.{k}" for k in SETTINGS)
            raise PredictInputError(f"predict.{key}: not a diffusion predict key; valid: {valid}")
        out[key] = yaml.safe_load(value) if isinstance(value, str) else value
    d, t = cfg.diffusion, cfg.training
    defaults = {
        "num_samples": int(d.num_samples),
        "fusion": str(d.get("fusion", "mean")),
        "seed": int(d.val_seed),
        "sw_overlap": float(t.sw_overlap),
        "skip_empty": bool(t.val_skip_empty),
    }
    for key, value in defaults.items():
        out[key] = value if out[key] is None else out[key]
    if not isinstance(out["num_samples"], int) or out["num_samples"] < 1:
        raise _bad("num_samples", out["num_samples"], "an integer >= 1")
    if out["sw_batch_size"] is None:
        out["sw_batch_size"] = max(1, int(t.val_batch_size) // out["num_samples"])
    if out["fusion"] not in FUSIONS:
        raise _bad("fusion", out["fusion"], f"choose one of {', '.join(FUSIONS)}")
    if out["amp"] not in AMPS:
        raise _bad("amp", out["amp"], f"choose one of {', '.join(AMPS)}")
    if not 0.0 <= float(out["sw_overlap"]) < 1.0:
        raise _bad("sw_overlap", out["sw_overlap"], "an overlap in [0, 1)")
    if int(out["sw_batch_size"]) < 1:
        raise _bad("sw_batch_size", out["sw_batch_size"], "an integer >= 1")
    return out


class DiffusionPredictor:
    """One diffusion cell, ready to give foreground probabilities on each input's grid; the
    interface of the segmentation recipe's ``Predictor`` (``data_key``, ``pipeline``,
    ``probabilities``), so its ensembling and inversion apply."""

    def __init__(
        self, ref: ModelRef, cmap: ChannelMap, settings: dict[str, Any], device: torch.device
    ) -> None:
        if settings["tta"]:
            raise PredictInputError(
                "diffusion cells have no mirroring TTA: their test-time ensemble is "
                f"predict.num_samples={settings['num_samples']} samples per window"
            )
        cfg = ref.config
        self.name, self.cfg, self.cmap, self.device = ref.name, cfg, cmap, device
        self.net, self.mode = build_denoiser(cfg.model)
        load_checkpoint(self.net, ref)
        self.net.to(device).eval()
        self.schedulers = build_schedulers(cfg.diffusion)
        self.slice_axis = slice_axis_of(cfg)
        if self.slice_axis is None:
            raise PredictInputError(f"{ref.name}: a diffusion cell is 2D (dims=2d)")
        amp = str(cfg.training.amp) if settings["amp"] == "train" else str(settings["amp"])
        self.amp = amp_for(device, amp)
        self.settings = settings
        self.data_key = OmegaConf.to_yaml(cfg.data)
        self._pipelines: dict[tuple[bool, tuple[str, ...]], Compose] = {}

    def pipeline(self, four_d: bool, files: tuple[str, ...] = ()) -> Compose:
        """Validation's deterministic transforms (a 4D file picks its channels after loading;
        ``files``: the case's, so that HDF5 / TIFF stacks get their readers)."""
        return case_pipeline(self._pipelines, self.cfg.data, self.cmap, four_d, files)

    @torch.no_grad()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """(background, foreground) probabilities (2, *spatial) on the preprocessed grid."""
        s, axis = self.settings, self.slice_axis
        assert axis is not None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_case_seed(int(s["seed"]), image))
        dcfg = OmegaConf.merge(
            self.cfg.diffusion, {"num_samples": s["num_samples"], "fusion": s["fusion"]}
        )
        windows = WindowPredictor(
            self.net, self.mode, self.schedulers, dcfg, self.amp, generator, s["skip_empty"]
        )
        windows.labelled = False
        x = (image.as_tensor() if isinstance(image, MetaTensor) else image).to(self.device)
        maps = sliding_window_inference(
            x.movedim(axis + 1, 0),  # one 2D item per slice
            list(self.cfg.training.patch_size),
            int(s["sw_batch_size"]),
            windows,
            float(s["sw_overlap"]),
        )
        assert isinstance(maps, torch.Tensor)
        fg = maps[:, 0:1].movedim(0, axis + 1).float().cpu()
        return torch.cat([1 - fg, fg], dim=0)


def _case_seed(seed: int, image: torch.Tensor) -> int:
    """The noise seed of one input: from ``seed`` and the input file's name."""
    meta = getattr(image, "meta", {}) or {}
    source = meta.get("filename_or_obj", "")
    source = source[0] if isinstance(source, (list, tuple)) else source
    key = Path(str(source)).name
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode())]).generate_state(1)[0])


def predict(request: PredictRequest) -> PredictResult:
    """Predict every case of ``request`` with diffusion cells (module doc)."""
    return segmentation.predict(request, DiffusionPredictor, resolve_settings)
