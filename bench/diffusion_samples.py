"""Benchmark: what the validation ensemble costs: 1 sample per window against 5, at 50 DDIM
steps, as the diffusion recipe's validation samples (``diffusion.num_samples``).

The same windows go through the recipe's ``WindowPredictor`` (the sampler, the fusion, the
snow check; the training objective is left out, it does not depend on the ensemble) in
calls of ``training.val_batch_size // num_samples`` windows, so the network batch stays
about ``val_batch_size`` either way, as in validation: time should grow about 5x and peak
memory barely. Each configuration runs in a fresh process so that its peak memory is its own
(``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the profiler's peak of bytes held by
tensors). On a GPU: the study's setting, medsegdiff_16c, 64 windows of 256², BF16,
val_batch_size 64; on a CPU a smaller problem (the ratio, not the seconds, is the figure).
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from bench.common import REPO, Options, Outcome, Row, fmt_s

CHILD = r"""
import json, sys, time
import torch
from hydra import compose, initialize_config_dir
from recipes.diffusion import CONFIG_DIR, CONFIG_NAME
from recipes.components.diffusion.models import build_denoiser
from recipes.components.diffusion.noise import build_schedulers
from recipes.components.diffusion.validation import WindowPredictor
from recipes.components.training.setup import avoid_onednn_bf16_backward

model, amp = sys.argv[1:3]
size, windows, per_call, samples, steps = map(int, sys.argv[3:8])
with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
    cfg = compose(CONFIG_NAME, [f"model={model}", f"training.patch_size=[{size},{size}]",
                                f"diffusion.sampling_steps={steps}",
                                f"diffusion.num_samples={samples}"])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
avoid_onednn_bf16_backward(device, amp)
torch.manual_seed(0)
net, mode = build_denoiser(cfg.model)
net = net.to(device).eval()
schedulers = build_schedulers(cfg.diffusion)
image = torch.randn(windows, cfg.data.in_channels, size, size, device=device)
calls = max(1, per_call // samples)

def run():
    generator = torch.Generator(device=device).manual_seed(0)
    predictor = WindowPredictor(net, mode, schedulers, cfg.diffusion, amp, generator, False)
    predictor.labelled = False
    with torch.no_grad():
        for i in range(0, windows, calls):
            predictor(image[i:i + calls])

def peak_allocated_mib():
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    now = top = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()
        top = max(top, now)
    return top / 2**20

if device.type == "cuda":
    run()  # warm-up: allocator, autotuner
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
run()
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - t
peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_allocated_mib()
print(json.dumps({"seconds": seconds, "peak_mib": peak, "calls_per_batch": calls}))
"""


def _measure(model: str, amp: str, size: int, windows: int, per_call: int, samples: int,
             steps: int) -> dict[str, float]:  # fmt: skip
    args = [model, amp, *(str(v) for v in (size, windows, per_call, samples, steps))]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env={
            "PYTHONPATH": str(REPO),
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        },
    )
    if out.returncode != 0:
        raise RuntimeError(f"sampling {samples} per window: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(opts: Options) -> Outcome:
    gpu = torch.cuda.is_available()
    steps = 50
    if gpu:  # the study: 16c, 256² windows, BF16, val_batch_size 64
        model, amp, size, windows, per_call = "medsegdiff_16c", "bf16", 256, 64, 64
    elif opts.quick:
        model, amp, size, windows, per_call, steps = "medsegdiff_tiny", "fp32", 16, 10, 10, 5
    else:
        model, amp, size, windows, per_call = "medsegdiff_16c", "fp32", 64, 20, 20
    one = _measure(model, amp, size, windows, per_call, 1, steps)
    five = _measure(model, amp, size, windows, per_call, 5, steps)
    shape = (
        f"{model}, {windows} windows of {size}², {amp}, DDIM {steps} steps, network batch "
        f"≤ {per_call} (val_batch_size): {int(one['calls_per_batch'])} windows a call "
        f"for 1 sample, {int(five['calls_per_batch'])} for 5"
    )
    where = "CUDA max allocated" if gpu else "CPU peak of bytes held by tensors"
    time_ratio = five["seconds"] / one["seconds"]
    mem_ratio = five["peak_mib"] / one["peak_mib"]
    rows = [
        Row(
            "Diffusion validation: 5 samples per window vs 1, time",
            fmt_s(five["seconds"]),
            fmt_s(one["seconds"]),
            f"{time_ratio:.2f}×",
            "≈ 5× (the ensemble's cost)",
            None,
            shape + ("" if gpu else "; CPU: informational"),
            {"one": one, "five": five},
        ),
        Row(
            "Diffusion validation: 5 samples per window vs 1, peak memory",
            f"{five['peak_mib']:.0f} MiB",
            f"{one['peak_mib']:.0f} MiB",
            f"{mem_ratio:.2f}×",
            "≤ 1.25× (same network batch)",
            mem_ratio <= 1.25,
            f"{where}; {shape}",
            {"one": one, "five": five},
        ),
    ]
    return Outcome(rows, {"one": one, "five": five})
