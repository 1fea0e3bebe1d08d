"""Gradient checkpointing on vs off, per architecture: memory and step time; and the cost of
a mid-epoch (step) training checkpoint against an epoch-end one.

Each (model, checkpointing) pair runs in its own fresh process, so that peak memory is that
configuration's alone: CPU peak RSS (``ru_maxrss``) here, ``torch.cuda.max_memory_allocated``
on a GPU. Also BF16 against FP32 step time for the default model (on a GPU that is the
figure that matters; on a CPU it is informational).

On a CPU, peak RSS with glibc's default malloc settings says little about what
checkpointing saves: freeing a multi-MiB tensor raises glibc's mmap threshold, so later
tensors of that size come from the heap, which fragments and keeps its high-water mark
(basic_unet at 64^3: ~440 MiB peak RSS for a ~140 MiB peak of live tensors, on and off
alike; the same pair's ratio moved by 0.2 between runs). The children therefore run with
a fixed ``MALLOC_MMAP_THRESHOLD_``: every large tensor is mmapped and returned on free, and
RSS follows the tensors (at some cost in page faults, on both sides of each ratio). Each
child also reports two deterministic figures from one extra step: the bytes autograd saves
for backward (what checkpointing acts on; the target), and on a CPU the peak of bytes held
by tensors during the step (from the profiler's allocation events; the analogue of the CUDA
figure, conv scratch buffers included: ``slow_conv3d``'s im2col buffer, used for batch-1
inputs with few channels, is 54 MiB for 2 channels at 64^3, with checkpointing on or off).

The training-checkpoint row writes ``last.pt`` the way the recipe does (``save_checkpoint``:
weights, AdamW state, scheduler, RNG states, fsync and atomic rename), alternately as an
epoch-end checkpoint and as a step checkpoint that also carries the epoch's position
(``in_epoch``); the ratio of the median write times is what a stop request or
``training.checkpoint_every_steps`` costs per write over the checkpoint every epoch has.
"""

from __future__ import annotations

import json

from bench.common import REPO, Options, Outcome, Row, run_children, times

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
from recipes.components.models.grad_checkpointing import saved_tensor_bytes
from recipes.components.models.build import apply_grad_checkpointing, build_model
from recipes.components.training.losses import build_loss

model_name, gc, amp = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
size, steps = int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
patch = f"training.patch_size=[{size},{size},{size}]"  # UNETR's img_size follows it
# The published sizes are GPU work; on CPU the bench measures the demo's networks.
tiny = [] if torch.cuda.is_available() else ["model.size=tiny"]
cfg = Recipe.load("segmentation").compose([f"model={model_name}", patch, *tiny])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
net = build_model(cfg.model).to(device).train()
if gc:
    apply_grad_checkpointing(net)
loss_fn = build_loss(cfg.loss, cfg.data.num_classes).to(device)
x = torch.randn(1, cfg.data.in_channels, size, size, size, device=device)
y = (torch.rand(1, 1, size, size, size, device=device) > 0.9).float()
opt = torch.optim.SGD(net.parameters(), lr=1e-3)

def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        out = net(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if out.dim() == x.dim() + 1:  # deep supervision stacked on dim 1
        out = out[:, 0]
    loss = loss_fn(out.float(), y)
    opt.zero_grad(); loss.backward(); opt.step()

def peak_allocated_mib():
    # Running sum of the profiler's allocation events (torch-internal API: None if it moves).
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:
        return None
    now = top = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()
        top = max(top, now)
    return top / 2**20

base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for i in range(steps + 1):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if i:  # the first step warms caches and allocators
        times.append(time.perf_counter() - t)
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:  # what the steps added on top of the process (torch, MONAI, the model) before them
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
step_s = sorted(times)[len(times) // 2]
# One more step each for the deterministic figures, after peak and times are taken.
saved = saved_tensor_bytes(step, exclude=net) / 2**20
alloc = peak if device.type == "cuda" else peak_allocated_mib()
print(json.dumps({"peak_mib": peak, "base_mib": base_rss / 1024, "step_s": step_s,
                  "saved_mib": saved, "alloc_mib": alloc}))
"""


#: The children's environment: one thread; glibc's default mmap threshold, but fixed (no
#: dynamic raise), so that RSS tracks live tensors.
MEASURE_ENV = {
    "PYTHONPATH": str(REPO),
    "PATH": "/usr/bin:/bin",
    "OMP_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),
}
CKPT_ENV = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


def _args(model: str, gc: bool, amp: str, size: int, steps: int) -> list[str]:
    return [model, "1" if gc else "0", amp, str(size), str(steps)]


CKPT_CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
from runner.recipe import Recipe
from recipes.components.models.build import build_model
from recipes.components.training.checkpoint import LAST, Progress, save_checkpoint
from recipes.components.training.loop import EpochState
from recipes.components.training.optim import build_optimizer, build_scheduler

writes = int(sys.argv[1])
torch.manual_seed(0)
cfg = Recipe.load("segmentation").compose([])
net = build_model(cfg.model)
opt = build_optimizer(cfg.optimizer, net, cfg.model.name)
schedule = build_scheduler(cfg.scheduler, opt, 10, 10)
net(torch.randn(1, cfg.data.in_channels, 32, 32, 32)).mean().backward()
opt.step()  # AdamW's moments exist, as in any checkpoint after the first step
progress = Progress(epoch=3, global_step=30)
state = EpochState(4, batches=5, total_loss=1.5, patches=10, lr=1e-4, seconds=2.0).as_dict()
times = {"epoch_end": [], "step": []}
with tempfile.TemporaryDirectory() as tmp:
    for i in range(2 * writes + 2):
        kind = ("epoch_end", "step")[i % 2]  # interleaved: drifts hit both alike
        progress.in_epoch = state if kind == "step" else None
        t = time.perf_counter()
        save_checkpoint(Path(tmp) / LAST, net, opt, schedule, progress)
        if i >= 2:  # the first pair warms the page cache and the pickler
            times[kind].append(time.perf_counter() - t)
        size = (Path(tmp) / LAST).stat().st_size
median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
print(json.dumps({**median, "mib": size / 2**20}))
"""


def _checkpoint_row(got: dict[str, float], writes: int) -> Row:
    ratio = got["step"] / got["epoch_end"]
    return Row(
        "Mid-epoch vs epoch-end checkpoint write (segresnet, AdamW)",
        f"{got['step'] * 1000:.1f} ms",
        f"{got['epoch_end'] * 1000:.1f} ms",
        f"{ratio:.2f}×",
        "< 1.2×",
        ratio < 1.2,
        f"median of {writes} writes each of a {got['mib']:.1f} MiB last.pt, interleaved; "
        "the step checkpoint adds only the epoch's position",
        got,
    )


def run(opts: Options) -> Outcome:
    import torch

    gpu = torch.cuda.is_available()
    size = 16 if opts.smoke else 96 if gpu else (48 if opts.quick else 64)
    steps = 1 if opts.smoke else 5 if gpu else (1 if opts.quick else 2)
    models = MODELS[:1] if opts.smoke else MODELS[:3] if opts.quick else MODELS
    unit = "CUDA max allocated" if gpu else "CPU peak RSS added by the training steps"
    writes = 2 if opts.smoke else 10 if opts.quick else 30
    # Each (model, checkpointing) pair in a fresh process, then BF16 for segresnet (its FP32
    # twin is the first "off" run), then the checkpoint writes; a smoke run, in one process.
    children = [(CHILD, _args(m, gc, "fp32", size, steps)) for m in models for gc in (False, True)]
    children.append((CHILD, _args("segresnet", False, "bf16", size, steps)))
    ckpt = (CKPT_CHILD, [str(writes)])
    if opts.smoke:
        outs = run_children([*children, ckpt], MEASURE_ENV, together=True)
    else:
        outs = run_children(children, MEASURE_ENV) + run_children([ckpt], CKPT_ENV)
    got = [json.loads(line) for line in outs]
    rows, details = [], {}
    for i, model in enumerate(models):
        off, on = got[2 * i], got[2 * i + 1]
        details[model] = {"off": off, "on": on}
        alloc = ""
        if not gpu and on["alloc_mib"] and off["alloc_mib"]:
            alloc = (
                f"; peak allocated {on['alloc_mib']:.0f} vs {off['alloc_mib']:.0f} MiB "
                f"({times(on['alloc_mib'], off['alloc_mib'])})"
            )
        rows.append(
            Row(
                f"Grad checkpointing {model} ({size}³): memory",
                f"{on['peak_mib']:.0f} MiB",
                f"{off['peak_mib']:.0f} MiB",
                times(on["peak_mib"], off["peak_mib"]),
                "< 1×",
                on["peak_mib"] < off["peak_mib"],
                f"{unit}; step time {on['step_s']:.2f} s vs "
                f"{off['step_s']:.2f} s ({times(on['step_s'], off['step_s'])}){alloc}",
                {"off": off, "on": on},
            )
        )
        rows.append(
            Row(
                f"Grad checkpointing {model} ({size}³): saved activations",
                f"{on['saved_mib']:.1f} MiB",
                f"{off['saved_mib']:.1f} MiB",
                times(on["saved_mib"], off["saved_mib"]),
                "< 0.9×",
                on["saved_mib"] < 0.9 * off["saved_mib"],
                "bytes autograd keeps for backward (saved_tensors_hooks; deterministic)",
                {"off": off["saved_mib"], "on": on["saved_mib"]},
            )
        )
    fp32, bf16 = details["segresnet"]["off"], got[-2]
    rows.append(
        Row(
            f"BF16 vs FP32 step, segresnet {size}³",
            f"{bf16['step_s']:.3f} s",
            f"{fp32['step_s']:.3f} s",
            times(bf16["step_s"], fp32["step_s"]),
            "< 1× on GPU",
            None if not gpu else bf16["step_s"] < fp32["step_s"],
            "GPU" if gpu else "CPU: bf16 autocast is emulated on most CPUs; informational",
            {"fp32": fp32, "bf16": bf16},
        )
    )
    rows.append(_checkpoint_row(got[-1], writes))
    return Outcome(rows, details)
