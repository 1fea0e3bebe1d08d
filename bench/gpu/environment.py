"""What the figures were measured on: the GPU and its driver, torch, CUDA, cuDNN, NCCL, the
precision settings that change what "FP32" means, and the packages the check imported."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from bench.common import cpu_model, git_state

# Distributions whose versions the figures depend on (absent ones read None).
PACKAGES = ("torch", "monai", "omegaconf", "hydra-core", "mlflow-skinny", "mlflow", "numpy")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        import pynvml  # nvidia-ml-py: on the device image, and what MLflow's GPU monitor uses

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def _git() -> dict[str, Any]:
    try:  # the lent machine's copy of the tree may have no git, or no .git
        return git_state()
    except OSError:
        return {"commit": None, "dirty": None}


def precision_settings() -> dict[str, Any]:
    """cuDNN convolutions may use TF32 for FP32 by default (``allow_tf32``); the recipe leaves
    these at torch's defaults, so the FP32 baselines are FP32 as the recipe runs it."""
    import torch

    out: dict[str, Any] = {"cudnn_benchmark": torch.backends.cudnn.benchmark}
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: per operator
        out["cudnn_conv_fp32_precision"] = conv.fp32_precision  # tf32: TF32 allowed
        out["matmul_fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
    else:
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        out["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return out


def nccl_version() -> str | None:
    import torch

    try:
        version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    except Exception:  # a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": {name: _version(name) for name in PACKAGES},
        "precision": precision_settings(),
        "git": _git(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": list(torch.cuda.get_device_capability(0)),
            "driver": _driver(),
            "nccl": nccl_version(),
        }
    return info


def describe(info: dict[str, Any]) -> str:
    """One line: ``NVIDIA H100 80GB HBM3 (79.1 GiB), torch 2.11.0, CUDA 13.0, cuDNN 91000``."""
    torch_part = f"torch {info['torch']}"
    if not info.get("cuda"):
        return f"CPU {info['cpu']}, no CUDA device; {torch_part}"
    return (
        f"{info['gpu']} ({info['gpu_memory_gib']} GiB, driver {info.get('driver')}); "
        f"{torch_part}, CUDA {info['torch_cuda']}, cuDNN {info['cudnn']}, NCCL {info['nccl']}"
    )
