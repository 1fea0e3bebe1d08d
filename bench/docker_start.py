"""Container start overhead per cell: how long a no-op submitit job takes from ``submit``
until its payload runs, through the docker executor (create + start a container, Python
start, pickle load) against the same job as a local process (submitit's LocalExecutor).

Needs a Docker Engine with the local base image: the one ``DOCKER_HOST`` names, else the
test suite's own, started and stopped here (:mod:`bench.docker_common`); without one it says
so and measures nothing. The container runs this checkout's virtualenv bind-mounted
read-only, as the tests do.

Run: ``.venv/bin/python -m bench --only docker_start`` (or ``python -m bench.docker_start``).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import submitit

from bench.common import Options, Outcome, Row
from bench.docker_common import BASE_IMAGE, ROOT, docker_engine, venv_mounts


def _noop() -> float:
    return time.time()


def _docker_seconds(folder: Path, n: int) -> list[float]:
    import docker

    from runner.executors.docker.backend import DockerExecutor, client

    executor = DockerExecutor(folder, sys.executable)
    volumes = {m: {"bind": m, "mode": "ro"} for m in venv_mounts()}
    volumes[str(folder)] = {"bind": str(folder), "mode": "rw"}
    executor.container = {
        "image": BASE_IMAGE,
        "volumes": volumes,
        "environment": {"SUBMITIT_EXECUTOR": "local", "PYTHONPATH": str(ROOT), "HOME": "/tmp"},
        "working_dir": str(ROOT),
        "network_mode": "none",
        "init": True,
        "labels": {"runner.backend": "docker", "runner.matrix": "bench"},
    }
    out = []
    for _ in range(n):
        t0 = time.time()
        job = executor.submit(_noop)
        out.append(job.result() - t0)  # until the payload runs (not submitit's 1 s polling)
        with contextlib.suppress(docker.errors.NotFound):
            client().api.remove_container(job.job_id, force=True)
    return out


def _local_seconds(folder: Path, n: int) -> list[float]:
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=5)
    out = []
    for _ in range(n):
        t0 = time.time()
        out.append(executor.submit(_noop).result() - t0)
    return out


def run(opts: Options) -> Outcome:
    with docker_engine() as problem:
        if problem:
            row = Row("docker start overhead", "not measured", "-", "-", "-", None, note=problem)
            return Outcome([row], details={"skipped": problem})
        return _measure(opts)


def _measure(opts: Options) -> Outcome:
    n = 1 if opts.smoke else 3 if opts.quick else 8
    with tempfile.TemporaryDirectory() as tmp:
        local = _local_seconds(Path(tmp) / "local", n)
        dock = _docker_seconds(Path(tmp) / "docker", n)
    lm, dm = statistics.median(local), statistics.median(dock)
    row = Row(
        "docker cell start (submit until the payload runs)",
        f"{dm:.2f} s",
        f"{lm:.2f} s local process",
        f"{dm / lm:.2f}x",
        "-",
        None,
        note=f"median of {n}; container create+start, interpreter and pickle load",
        values={"docker_s": dock, "local_s": local, "n": n},
    )
    return Outcome([row], details={"docker_s": dock, "local_s": local})


if __name__ == "__main__":
    outcome = run(Options(quick="--quick" in sys.argv))
    for r in outcome.rows:
        print(f"{r.benchmark}: {r.measured} vs {r.baseline} ({r.ratio})")
    print(outcome.details)
