"""Start-up decisions every recipe makes the same way: the device, seeding, where
checkpoints live and what a standalone run is called."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from monai.utils import set_determinism
from omegaconf import DictConfig

from recipes.contract import RunContext


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 NVIDIA H100 80GB HBM3``: what the run trained on."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # MONAI's helper seeds and pins cuDNN; deterministic kernels only warn where torch
        # has none (e.g. trilinear upsampling backward on CUDA, used by SegResNet) rather
        # than failing the run. cuBLAS needs its workspace fixed before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        set_determinism(seed=seed)
        torch.use_deterministic_algorithms(True, warn_only=True)


def standalone_run_name() -> str | None:
    """Under Hydra (also multirun), name the run by its overrides: ``model=unet,seed=1``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().job.override_dirname or None


def checkpoint_dir(cfg: DictConfig, ctx: RunContext | None, run_id: str) -> Path:
    """ctx's directory, else training.checkpoint_dir, else Hydra's output dir, else per run."""
    if ctx is not None:
        return Path(ctx.checkpoint_dir)
    if cfg.training.get("checkpoint_dir"):
        return Path(cfg.training.checkpoint_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / "checkpoints"
    return Path("checkpoints") / run_id


def avoid_onednn_bf16_backward(device: torch.device, amp: str) -> bool:
    """On CPU with BF16 autocast, route convolutions around oneDNN; True when it did.

    oneDNN's BF16 convolution backward-weights kernels (``x64:gemm:jit`` on AVX-512 CPUs,
    seen on AMD EPYC with avx512_bf16) intermittently return NaN weight gradients for small
    feature maps, so a healthy run would read as diverged. ATen's own kernels are exact
    here; CPU BF16 is a development setting, so the slower path costs little.
    """
    if device.type != "cpu" or amp != "bf16" or not torch.backends.mkldnn.is_available():
        return False
    torch.backends.mkldnn.enabled = False
    return True
