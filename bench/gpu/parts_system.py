"""Parts 6 and 7: the DDP path on NCCL, and MLflow's GPU system metrics.

6. A process group of one on NCCL (a TCP store on a free loopback port), the model wrapped
   by the recipe's ``Dist.wrap`` (``DistributedDataParallel``), steps through the recipe's
   epoch function with the group agreeing on finiteness at every step, then the group's
   collectives (``sum``, ``any``, ``share``, ``gather``) and ``close``. The recipe treats a
   world of one as no group at all (``init_distributed``), which is right for a cell but
   would never touch NCCL here; so the check forms the group itself and uses a ``Dist``
   whose one-process shortcut is off. With one rank the all-reduce of the gradients is an
   identity, so the step's update must be the one of the same step without DDP.
   On a CPU the same path runs on gloo (and says so).
7. MLflow's SystemMetricsMonitor through the recipe's ``start_system_metrics`` into a run of
   a file store in a scratch directory, sampling every 0.5 s while the GPU works for ~3 s:
   ``system/gpu_*`` series must appear in the run.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import Row
from bench.gpu.environment import nccl_version
from bench.gpu.harness import Ctx, Deadline, PartRecord
from bench.gpu.recipe import build_trainee, one_step, seg_config, synthetic_batch

# The update of one step with and without DDP (one rank): equal up to the nondeterminism of
# cuDNN's backward kernels (atomics; under BF16 a differently rounded element here and
# there), far below this; a gradient DDP lost or scaled would be off by O(1).
SAME_STEP_RTOL = 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_of_one() -> type:
    from recipes.components.training.distributed import Dist

    class GroupOfOne(Dist):
        """The recipe's ``Dist`` with its one-process shortcut off: every collective and the
        DDP wrap go through the process group, as with N ranks."""

        @property
        def active(self) -> bool:
            return True

    return GroupOfOne


def _sgd_lr1(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Plain SGD at lr 1: no optimizer state, and the step's update is the gradient."""
    return torch.optim.SGD(model.parameters(), lr=1.0)


def _update(before: list[torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
    after = [p.detach().double().flatten() for p in model.parameters()]
    return torch.cat([b.double().flatten() for b in before]) - torch.cat(after)


def nccl_ddp(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    import torch.distributed as td

    from recipes.components.models.build import build_model

    backend = "nccl" if ctx.cuda else "gloo"
    dl.require(f"{backend} group")
    dev = ctx.device
    if ctx.cuda:  # as init_distributed does: an indexed device, current for NCCL
        dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    side, batch = (16, 2) if ctx.tiny else (64, 2)
    amp = "bf16" if ctx.cuda else "fp32"
    cfg = seg_config("segresnet", side, amp, ctx.tiny)
    torch.manual_seed(0)
    base = build_model(cfg.model).to(dev)
    plain_net = copy.deepcopy(base)
    before = [p.detach().clone() for p in base.parameters()]
    data = synthetic_batch(cfg, batch, dev)
    port = _free_port()
    store = td.TCPStore(
        "127.0.0.1", port, world_size=1, is_master=True, timeout=datetime.timedelta(seconds=60)
    )
    kwargs: dict[str, Any] = {"device_id": dev} if ctx.cuda else {}
    start = time.perf_counter()
    td.init_process_group(
        backend,
        store=store,
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=120),
        **kwargs,
    )
    init_s = time.perf_counter() - start
    dist = _group_of_one()(rank=0, world=1, device=dev, _owns_group=True)
    try:
        trainee = build_trainee(
            cfg, dev, optimizer=_sgd_lr1, wrap=dist.wrap, group=dist, model=base
        )
        wrapped = type(trainee.model).__name__
        ddp_s, ddp_loss = one_step(trainee, data)
        collectives = {
            "sum": dist.sum(2.5),
            "any": dist.any(True),
            "share": dist.share({"rank0": "decision"}),
            "gather": dist.gather(7),
        }
        group_backend = td.get_backend()
    finally:
        dist.close()
    destroyed = not td.is_initialized()
    plain = build_trainee(cfg, dev, optimizer=_sgd_lr1, model=plain_net)
    plain_s, plain_loss = one_step(plain, data)
    # One rank's all-reduce averages one gradient: DDP's update must be the plain one.
    g_ddp, g_plain = _update(before, base), _update(before, plain_net)
    rel = float((g_ddp - g_plain).norm() / g_plain.norm())
    expected = {"sum": 2.5, "any": True, "share": {"rank0": "decision"}, "gather": [7]}
    checks = {
        "same_update": rel <= SAME_STEP_RTOL,
        "collectives": collectives == expected,
        "destroyed": destroyed,
        "wrapped_in_ddp": wrapped == "DistributedDataParallel",
    }
    nccl = nccl_version() if ctx.cuda else None
    rec.rows.append(
        Row(
            f"DDP path, world size 1, {group_backend}: one step",
            f"{ddp_s * 1e3:.0f} ms, loss {ddp_loss:.5f}",
            f"{plain_s * 1e3:.0f} ms, loss {plain_loss:.5f} (no DDP)",
            f"update rel diff {rel:.1e}",
            f"ran; same update ≤ {SAME_STEP_RTOL:g}",
            all(checks.values()),
            (f"NCCL {nccl}" if ctx.cuda else "no CUDA device: gloo on the CPU, the same path")
            + f"; segresnet {side}³×{batch} {amp}; group formed in {init_s:.2f} s on a TCP store "
            f"at 127.0.0.1:{port}; {wrapped} via Dist.wrap, the loop's per-step agreement, "
            "Dist.sum/any/share/gather, Dist.close (destroy_process_group); first steps, so the "
            "times include DDP's set-up",
            {"checks": checks, "collectives": collectives, "update_rel_diff": rel},
        )
    )
    rec.details |= {"backend": group_backend, "nccl": nccl, "model": f"segresnet {side}³×{batch}"}


def system_metrics(ctx: Ctx, rec: PartRecord, dl: Deadline) -> None:
    try:
        import mlflow  # noqa: F401 - mlflow-skinny is enough; absent: the part says so
    except ImportError as exc:
        rec.skip("part", f"MLflow is not installed here ({exc}); `make gpu-wheels` ships it")
        return
    seconds = 1.5 if ctx.tiny else 3.0
    dl.check(seconds + 5, "system metrics run")
    # mlflow-skinny has no SQL store; MLflow >= 3.7 refuses a file store unless asked.
    allow = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        keys = _monitored_run(ctx, seconds)
    finally:
        if allow is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = allow
    _system_row(ctx, rec, keys, seconds)


def _monitored_run(ctx: Ctx, seconds: float) -> list[str]:
    """The metric keys of a run that MLflow's monitor sampled while the device worked."""
    from mlflow.tracking import MlflowClient

    from recipes.components.training.system_metrics import start_system_metrics

    with tempfile.TemporaryDirectory(dir=ctx.tmp) as tmp:
        uri = Path(tmp, "mlruns").as_uri()
        client = MlflowClient(uri)
        experiment = client.create_experiment("gpu-check")
        run = client.create_run(experiment, run_name="system-metrics")
        stop = start_system_metrics("on", uri, run.info.run_id, ctx.device, interval_s=0.5)
        end = time.perf_counter() + seconds
        x = torch.randn(2048, 2048, device=ctx.device)
        while time.perf_counter() < end:  # keep the GPU busy so utilisation reads > 0
            x = torch.tanh(x @ x.T / 2048)
            if ctx.cuda:
                torch.cuda.synchronize()
        stop()
        client.set_terminated(run.info.run_id)
        return sorted(client.get_run(run.info.run_id).data.metrics)


def _system_row(ctx: Ctx, rec: PartRecord, keys: list[str], seconds: float) -> None:
    system = [k for k in keys if k.startswith("system/")]
    gpu = [k for k in system if k.startswith("system/gpu_")]
    if ctx.cuda:
        met, note = bool(gpu), f"GPU series: {', '.join(gpu) or 'none'}"
    else:
        met, note = None, "no CUDA device: no system/gpu_* expected; the CPU series show the path"
    rec.rows.append(
        Row(
            "MLflow system metrics: system/gpu_* in the run",
            f"{len(gpu)} GPU series, {len(system)} system series",
            "—",
            "—",
            "system/gpu_* present" if ctx.cuda else "—",
            met,
            note + f"; sampled every 0.5 s for {seconds:g} s into a file store",
            {"system_keys": system, "gpu_keys": gpu},
        )
    )
    if not ctx.cuda:
        rec.skip("system/gpu_*", "no CUDA device")
