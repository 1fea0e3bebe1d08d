"""``python -m bench [--quick | --smoke] [--only NAME] [--threads N]``: run the benchmarks,
write ``bench/results/results.{json,md}`` and print the table. ``--smoke`` runs every code
path of each benchmark at tiny sizes, in seconds, so that none breaks unnoticed (the suite
does: tests/test_bench.py); its figures mean nothing, and it writes to a temporary folder
unless ``--out`` says where."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.common import (
    RESULTS,
    Options,
    Outcome,
    cpu_seconds,
    device_info,
    git_state,
    load_average,
)

NAMES = (
    "plan",
    "startup",
    "trainer",
    "data",
    "tracking",
    "checkpointing",
    "slurm",
    "docker_start",
    "makespan",
    "docker_makespan",
    "diffusion",
    "diffusion_samples",
    "asha",
    "slurm_status",
    "loader",
    "ddp",
    "lazy_read",
    "profile_overhead",
    "remedies",
)


def _runners(threads: int | None) -> dict[str, Callable[[Options], Outcome]]:
    from bench import (
        checkpointing,
        data,
        diffusion,
        docker_makespan,
        docker_start,
        makespan,
        plan,
        slurm,
        startup,
        tracking,
        trainer,
    )

    return {
        "plan": plan.run,
        "startup": lambda o: startup.run(o, threads),
        "trainer": trainer.run,
        "data": data.run,
        "tracking": tracking.run,
        "checkpointing": checkpointing.run,
        "slurm": slurm.run,
        "docker_start": docker_start.run,
        "makespan": makespan.run,
        "docker_makespan": docker_makespan.run,
        "diffusion": diffusion.run,
        "diffusion_samples": lambda o: __import__("bench.diffusion_samples", fromlist=["run"]).run(
            o
        ),
        "asha": lambda o: __import__("bench.asha", fromlist=["run"]).run(o),
        "slurm_status": lambda o: __import__("bench.slurm_status", fromlist=["run"]).run(o),
        "loader": lambda o: __import__("bench.loader", fromlist=["run"]).run(o),
        "ddp": lambda o: __import__("bench.ddp", fromlist=["run"]).run(o),
        "lazy_read": lambda o: __import__("bench.lazy_read", fromlist=["run"]).run(o),
        "profile_overhead": lambda o: __import__("bench.profile_overhead", fromlist=["run"]).run(o),
        "remedies": lambda o: __import__("bench.remedies", fromlist=["run"]).run(o),
    }


def _threads(requested: int | None) -> int | None:
    """Torch threads for this process and the start-latency child.

    Default on CPU: 1, which is what each cell of the 2-slot demo sweep gets on a 2-core
    machine, and which keeps timings sane when other processes load the CPU (two spinning
    OpenMP threads sharing cores with other work slow down erratically, by 2-10x).
    0: torch's own default. On a GPU the default is left alone.
    """
    import torch

    if requested is None:
        requested = 0 if torch.cuda.is_available() else 1
    if requested > 0:
        torch.set_num_threads(requested)
        return requested
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller run (minutes on CPU)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every code path at tiny sizes, seconds each; figures not meaningful",
    )
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this one")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None:  # a smoke run's figures must not replace real ones
        args.out = Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else RESULTS

    started, t0 = datetime.now(UTC), time.perf_counter()
    load_start = load_average()
    threads = _threads(args.threads)
    import mlflow  # noqa: F401 - imported here so that its loggers can be quietened

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    opts = Options(quick=args.quick or args.smoke, smoke=args.smoke)
    runners = _runners(threads)
    outcomes: dict[str, Outcome] = {}
    errors: dict[str, str] = {}
    cpu: dict[str, float] = {}
    for name in args.only or NAMES:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t, c = time.perf_counter(), cpu_seconds()
        try:
            outcomes[name] = runners[name](opts)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
        cpu[name] = cpu_seconds() - c
        took = f"{time.perf_counter() - t:.0f} s, CPU {cpu[name]:.0f} s"
        print(f"[bench] {name} took {took}", file=sys.stderr)

    from bench import report

    meta = {
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "command": shlex.join(["python", "-m", "bench", *(argv or sys.argv[1:])]),
        "git": git_state(),
        "device": device_info(),
        "load_start": load_start,
        "load_end": load_average(),
        # This process and the processes it waited for (not containers, not SLURM jobs).
        "cpu_s": cpu,
    }
    print(report.write(args.out, meta, outcomes, errors))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
