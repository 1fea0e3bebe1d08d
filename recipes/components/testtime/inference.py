"""One trained model at test time: its preprocessing, sliding window, TTA, and the way back.

A case is preprocessed exactly as validation volumes are (``load_transforms``: channel
first, RAS, ``data.spacing`` resampling, z-score), predicted with a sliding window (slice by
slice for 2D models) whose windows are blended with a Gaussian, optionally averaged over
mirrored copies (test-time augmentation, nnU-Net's mirroring), turned into softmax
probabilities (``task=em_instance``: its three head maps, binary and boundary sigmoid
probabilities and the distance clipped to [0, 1], which the watershed decodes), and finally
sent back through the inverse of the preprocessing (MONAI's
``Invertd``: the resampling and reorientation undone), so the probabilities lie on the
input file's own grid: same shape, same affine.

The ``predict.*`` keys (defaults in :data:`SETTINGS`):

sw_batch_size, sw_overlap, sw_mode (gaussian | constant), sw_sigma_scale, sw_padding_mode
    MONAI's sliding-window arguments; the window is ``training.patch_size``.
amp
    ``auto`` (bf16 on a CUDA device that has it, else fp32) | bf16 | fp16 | fp32.
device
    ``auto`` | cpu | cuda | cuda:N.
tta, mirror_axes
    mirroring TTA over every combination of ``mirror_axes`` (axes of the RAS volume, 0..2;
    null: all three in 3D, the two in-plane axes in 2D).
"""

from __future__ import annotations

import difflib
import itertools
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import yaml
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import Compose, Invertd
from omegaconf import DictConfig, OmegaConf

from recipes.components.data.loaders import SelectChannelsd, load_transforms
from recipes.components.data.slices import slice_axis_of
from recipes.components.models.build import build_model, load_plain_state_dict
from recipes.components.testtime.inputs import ChannelMap
from recipes.components.testtime.stack_cases import is_stack_file
from recipes.components.training.step import autocast
from recipes.components.training.validation import task_of
from recipes.contract import ModelRef, PredictInputError

SETTINGS: dict[str, Any] = {
    "sw_batch_size": 4,
    "sw_overlap": 0.5,
    "sw_mode": "gaussian",
    "sw_sigma_scale": 0.125,
    "sw_padding_mode": "constant",
    "amp": "auto",
    "device": "auto",
    "tta": False,
    "mirror_axes": None,
}
CHOICES = {
    "sw_mode": ("constant", "gaussian"),
    "sw_padding_mode": ("constant", "reflect", "replicate", "circular"),
    "amp": ("auto", "bf16", "fp16", "fp32"),
}


def _bad(key: str, value: Any, valid: str) -> PredictInputError:
    return PredictInputError(f"predict.{key}={value!r}: {valid}")


def resolve_settings(cfg: DictConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, then the config's ``predict`` section, then ``overrides`` (strings from a
    command line are read as YAML values: ``0.75``, ``true``, ``[0, 1]``)."""
    out = dict(SETTINGS)
    section = cfg.get("predict")
    from_cfg = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    for source in (from_cfg, overrides):
        for raw_key, value in dict(source or {}).items():  # type: ignore[call-overload]
            key = str(raw_key).removeprefix("predict.")
            if key not in SETTINGS:
                close = difflib.get_close_matches(key, SETTINGS, n=1)
                hint = f" (did you mean 'predict.{close[0]}'?)" if close else ""
                valid = ", ".join(f"predict.{k}" for k in SETTINGS)
                raise PredictInputError(f"predict.{key}: unknown key; valid keys: {valid}{hint}")
            out[key] = yaml.safe_load(value) if isinstance(value, str) else value
    for key, choices in CHOICES.items():
        if out[key] not in choices:
            raise _bad(key, out[key], f"choose one of {', '.join(choices)}")
    if not 0.0 <= float(out["sw_overlap"]) < 1.0:
        raise _bad("sw_overlap", out["sw_overlap"], "an overlap in [0, 1)")
    if int(out["sw_batch_size"]) < 1:
        raise _bad("sw_batch_size", out["sw_batch_size"], "an integer >= 1")
    axes = out["mirror_axes"]
    if axes is not None and (
        not isinstance(axes, list) or any(a not in (0, 1, 2) for a in axes) or not axes
    ):
        raise _bad("mirror_axes", axes, "a list of spatial axes among 0, 1, 2, or null")
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_for(device: torch.device, amp: str) -> str:
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def load_checkpoint(net: torch.nn.Module, ref: ModelRef) -> None:
    """Load ``ref.checkpoint`` (a training checkpoint's ``model`` entry, or a bare state dict)
    into ``net``; one that is unreadable or does not fit the network is a
    ``PredictInputError`` naming the model, the file and the first line of the cause."""
    try:
        state = torch.load(ref.checkpoint, map_location="cpu", weights_only=True)
        load_plain_state_dict(net, state.get("model", state))
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise PredictInputError(
            f"{ref.name or 'model'}: checkpoint {ref.checkpoint} does not load into "
            f"model={ref.config.model.get('name')}: {first}"
        ) from None


def case_pipeline(
    cache: dict[tuple[bool, tuple[str, ...]], Compose],
    data_cfg: DictConfig,
    cmap: ChannelMap,
    four_d: bool,
    files: tuple[str, ...],
) -> Compose:
    """Validation's deterministic transforms for a case, built once per (4D or not, file
    kinds) in ``cache``: a 4D file (MSD) picks its channels after loading; ``files`` (the
    case's) give HDF5 / TIFF stacks their readers."""
    kinds = tuple(sorted({f.lower().rsplit(".", 1)[-1] for f in files}))
    if (four_d, kinds) not in cache:
        select = SelectChannelsd("image", list(cmap.fed), cmap.dataset) if four_d else None
        cache[four_d, kinds] = Compose(
            load_transforms(data_cfg, select, keys=["image"], files=files)
        )
    return cache[four_d, kinds]


class Predictor:
    """One model, ready to give softmax probabilities on each input's grid."""

    def __init__(
        self, ref: ModelRef, cmap: ChannelMap, settings: dict[str, Any], device: torch.device
    ) -> None:
        cfg = ref.config
        self.task = task_of(cfg)
        if not ref.checkpoint.is_file():
            raise PredictInputError(f"checkpoint {ref.checkpoint} not found")
        self.name, self.cfg, self.cmap, self.device = ref.name, cfg, cmap, device
        self.model = build_model(cfg.model)
        load_checkpoint(self.model, ref)
        self.model.to(device).eval()
        self.slice_axis = slice_axis_of(cfg)
        self.amp = amp_for(device, str(settings["amp"]))
        self.inferer = self._inferer(cfg, settings)
        axes = settings["mirror_axes"]
        if axes is None:
            axes = [a for a in (0, 1, 2) if a != self.slice_axis]
        self.mirror = [
            combo for r in range(1, len(axes) + 1) for combo in itertools.combinations(axes, r)
        ]
        self.tta = bool(settings["tta"])
        # Members sharing a data config share one preprocessing (and one inversion).
        self.data_key = OmegaConf.to_yaml(cfg.data)
        self._pipelines: dict[tuple[bool, tuple[str, ...]], Compose] = {}

    def _inferer(self, cfg: DictConfig, s: dict[str, Any]) -> Inferer:
        kwargs: dict[str, Any] = {
            "roi_size": list(cfg.training.patch_size),
            "sw_batch_size": int(s["sw_batch_size"]),
            "overlap": float(s["sw_overlap"]),
            "mode": str(s["sw_mode"]),
            "sigma_scale": float(s["sw_sigma_scale"]),
            "padding_mode": str(s["sw_padding_mode"]),
        }
        if self.slice_axis is None:
            return SlidingWindowInferer(**kwargs)
        return SliceInferer(spatial_dim=self.slice_axis, **kwargs)

    def pipeline(self, four_d: bool, files: tuple[str, ...] = ()) -> Compose:
        """Validation's deterministic transforms; a 4D file (MSD) picks its channels after
        loading, per-channel files were picked by name before. ``files``: the case's, so that
        HDF5 / TIFF stacks get their readers."""
        return case_pipeline(self._pipelines, self.cfg.data, self.cmap, four_d, files)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp):
            out = self.inferer(x, self.model)
        if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head
            out = out[0]
        out = out.float()  # type: ignore[union-attr]
        if self.task == "em_instance":  # binary, boundary: sigmoid; distance: clipped
            return torch.cat([torch.sigmoid(out[:, :2]), out[:, 2:3].clamp(0.0, 1.0)], dim=1)
        return torch.softmax(out, dim=1)

    @torch.no_grad()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (C, *spatial) on the preprocessed grid, on the CPU."""
        x = (image.as_tensor() if isinstance(image, MetaTensor) else image)[None]
        x = x.to(self.device)
        probs = self._forward(x)
        if self.tta:
            for axes in self.mirror:
                dims = [a + 2 for a in axes]
                probs += torch.flip(self._forward(torch.flip(x, dims)), dims)
            probs /= 1 + len(self.mirror)
        return probs[0].cpu()


def invert(pipeline: Compose, data: dict[str, Any], probs: torch.Tensor) -> np.ndarray:
    """``probs`` on the preprocessed grid of ``data["image"]``, taken back to the input's
    grid (the resampling and reorientation of ``pipeline`` undone; linear interpolation)."""
    image = data["image"]
    pred = MetaTensor(probs, affine=image.affine)
    out = Invertd("pred", pipeline, orig_keys="image", nearest_interp=False, to_tensor=True)(
        {"image": image, "pred": pred}
    )
    back = out["pred"]
    return np.asarray(back.as_tensor() if isinstance(back, MetaTensor) else back, np.float32)


def ensemble_probabilities(predictors: list[Predictor], item: dict[str, Any]) -> np.ndarray:
    """The mean of the members' probabilities on the input's grid (C, X, Y, Z).

    Members that share a data config are preprocessed once; their probabilities are summed
    on that grid and inverted once (inversion is linear, so this equals inverting each)."""
    four_d = not isinstance(item["image"], list) and not is_stack_file(item["image"])
    files = tuple(item["image"]) if isinstance(item["image"], list) else (item["image"],)
    by_data: dict[str, list[Predictor]] = {}
    for p in predictors:
        by_data.setdefault(p.data_key, []).append(p)
    total: np.ndarray | None = None
    for members in by_data.values():
        pipeline = members[0].pipeline(four_d, files)
        data = pipeline({"image": item["image"]})
        summed = sum(m.probabilities(data["image"]) for m in members)
        back = invert(pipeline, data, summed)  # type: ignore[arg-type]
        total = back if total is None else total + back
    assert total is not None
    return total / len(predictors)
