"""Child process of the start-latency benchmark: a real cell, stopped after its first step.

Runs ``runner.job.cell.CellJob`` (the payload every executor runs) and stamps the wall clock as
the cell goes: interpreter start, the heavy imports (done up front, one by one, so that each
gets its own line; shared dependencies count for the first that pulls them in), MLflow run
creation, Hydra composition, data loading, model build, MLflow params, the first batch and
the end of the first optimizer step, where it exits. Prints ``BENCH_MARKS <json>``.

A job with ``standby`` set runs as a warm standby (runner.job.standby): after its warm-up it
prints ``BENCH_READY`` and waits for the go that the parent then writes; the interval until
it sees the go is labelled ``waiting for the go``.
"""

from __future__ import annotations

import time

T_TOP = time.time()

import json  # noqa: E402 - after the first stamp on purpose
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

# Each mark closes the interval since the previous one and names what filled it.
MARKS: list[tuple[str, float]] = [("start", float(os.environ["BENCH_T0"]))]
MARKS.append(("interpreter start", T_TOP))


from bench.common import WAITING  # noqa: E402 - a few stdlib imports, after the stamp


def mark(label: str) -> None:
    MARKS.append((label, time.time()))


def wrap(owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        mark("other (job bookkeeping, seeding, ...)")
        try:
            return original(*args, **kwargs)
        finally:
            mark(label)

    setattr(owner, name, timed)


def main() -> None:
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    mark("import torch")
    # Before monai on purpose: monai's own __init__ imports mlflow (monai.handlers), so this
    # line is what every MONAI script pays for mlflow whether it tracks or not.
    import mlflow  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    mark("import mlflow")
    import monai  # noqa: F401

    mark("import monai")
    import hydra  # noqa: F401
    from hydra import compose, initialize_config_dir  # noqa: F401

    mark("import hydra")
    from recipes.components.training import mlflow_logging
    from recipes.segmentation import train as train_module
    from runner import tracking
    from runner.job import standby
    from runner.job.cell import CellJob
    from runner.recipe import Recipe

    mark("import recipe + runner (MONAI networks/transforms, ...)")
    warm_up, take_on = standby.warm_up, standby.take_on

    def warmed(job: Any) -> bool:
        touched = warm_up(job)
        mark("standby warm-up (torch._dynamo, compose, store)")
        print("BENCH_READY", flush=True)
        return touched

    def going(*args: Any) -> None:
        mark(WAITING)
        take_on(*args)

    standby.warm_up, standby.take_on = warmed, going  # type: ignore[assignment]

    mlflow_run = "MLflow: open store, find/create the cell's run"
    wrap(tracking, "find_run", mlflow_run)
    wrap(tracking, "start_cell_run", mlflow_run)
    wrap(Recipe, "compose", "compose config (Hydra)")
    wrap(train_module, "build_data", "data: read + normalise + cache volumes")
    wrap(train_module, "build_model", "model build (+ CUDA init on GPU)")
    wrap(train_module, "build_loss", "loss build")
    # torch imports torch._dynamo when the first optimizer is made: seconds on a slow CPU.
    wrap(train_module, "build_optimizer", "optimizer build (torch imports torch._dynamo)")
    wrap(train_module, "build_scheduler", "LR schedule build")
    for method in ("__init__", "log_params", "log_config"):
        wrap(mlflow_logging.RunLogger, method, "MLflow: params + config artifact")

    def first_forward(module: torch.nn.Module, args: Any) -> None:
        mark("first batch from the DataLoader")
        handle.remove()

    def first_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        mark("first step (forward, backward, optimizer)")
        # Report and leave at once: what the job does after (recording the stop as a
        # failure, interpreter teardown) is not start latency and only costs bench time.
        print("BENCH_MARKS " + json.dumps(MARKS), flush=True)
        os._exit(0)

    handle = register_module_forward_pre_hook(first_forward)
    register_optimizer_step_post_hook(first_step)
    job = CellJob(**json.loads(sys.argv[1]))
    job()
    raise SystemExit("the cell ended without a training step")


if __name__ == "__main__":
    main()
