"""Gradient checkpointing on vs off, per architecture: peak memory and step time.

Each (model, checkpointing) pair runs in its own fresh process, so that peak memory is that
configuration's alone: CPU peak RSS (``ru_maxrss``) here, ``torch.cuda.max_memory_allocated``
on a GPU. Also BF16 against FP32 step time for the default model (on a GPU that is the
figure that matters; on a CPU it is informational).
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import REPO, Options, Outcome, Row

MODELS = (
    "segresnet",
    "unet",
    "basic_unet",
    "dynunet",
    "attention_unet",
    "unetr",
    "swin_unetr",
    "mednext",
    "meshnet",
    "rsunet",
)

CHILD = r"""
import json, resource, sys, time
import torch
from runner.recipe import Recipe
from recipes.components.models import apply_grad_checkpointing, build_model
from recipes.components.losses import build_loss

model_name, gc, amp = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
size, steps = int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
patch = f"training.patch_size=[{size},{size},{size}]"  # UNETR's img_size follows it
cfg = Recipe.load("segmentation").compose([f"model={model_name}", patch])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
net = build_model(cfg.model).to(device).train()
if gc:
    apply_grad_checkpointing(net)
loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
x = torch.randn(1, cfg.data.in_channels, size, size, size, device=device)
y = (torch.rand(1, 1, size, size, size, device=device) > 0.9).float()
opt = torch.optim.SGD(net.parameters(), lr=1e-3)
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for step in range(steps + 1):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        out = net(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if out.dim() == x.dim() + 1:  # deep supervision stacked on dim 1
        out = out[:, 0]
    loss = loss_fn(out.float(), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if step:  # the first step warms caches and allocators
        times.append(time.perf_counter() - t)
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:  # what the steps added on top of the process (torch, MONAI, the model) before them
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
step_s = sorted(times)[len(times) // 2]
print(json.dumps({"peak_mib": peak, "base_mib": base_rss / 1024, "step_s": step_s}))
"""


def _measure(model: str, gc: bool, amp: str, size: int, steps: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, "1" if gc else "0", amp, str(size), str(steps)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{model} gc={gc}: {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(opts: Options) -> Outcome:
    import torch

    gpu = torch.cuda.is_available()
    size = 96 if gpu else (48 if opts.quick else 64)
    steps = 5 if gpu else (1 if opts.quick else 2)
    models = MODELS[:3] if opts.quick else MODELS
    unit = "CUDA max allocated" if gpu else "CPU peak RSS added by the training steps"
    rows, details = [], {}
    for model in models:
        off = _measure(model, False, "fp32", size, steps)
        on = _measure(model, True, "fp32", size, steps)
        details[model] = {"off": off, "on": on}
        rows.append(
            Row(
                f"Grad checkpointing {model} ({size}³): memory",
                f"{on['peak_mib']:.0f} MiB",
                f"{off['peak_mib']:.0f} MiB",
                f"{on['peak_mib'] / off['peak_mib']:.2f}×",
                "< 1×",
                on["peak_mib"] < off["peak_mib"],
                f"{unit}; step time {on['step_s']:.2f} s vs "
                f"{off['step_s']:.2f} s ({on['step_s'] / off['step_s']:.2f}×)",
                {"off": off, "on": on},
            )
        )
    fp32 = _measure("segresnet", False, "fp32", size, steps)
    bf16 = _measure("segresnet", False, "bf16", size, steps)
    rows.append(
        Row(
            f"BF16 vs FP32 step, segresnet {size}³",
            f"{bf16['step_s']:.3f} s",
            f"{fp32['step_s']:.3f} s",
            f"{bf16['step_s'] / fp32['step_s']:.2f}×",
            "< 1× on GPU",
            None if not gpu else bf16["step_s"] < fp32["step_s"],
            "GPU" if gpu else "CPU: bf16 autocast is emulated on most CPUs; informational",
            {"fp32": fp32, "bf16": bf16},
        )
    )
    return Outcome(rows, details)
