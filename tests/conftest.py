"""Shared fixtures: matrix files written into a temporary project directory, and the
machine-wide infrastructure (SLURM cluster, Docker Engine) one run shares across its
pytest-xdist workers (tests/infra/shared.py says how)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra import schedule, shared

ROOT = Path(__file__).resolve().parents[1]

# pytest keeps the last 3 numbered temp dirs under one root for every run of the machine's
# user and deletes older ones, also while another checkout's run still uses them (seen
# here: two runs at once lost each other's tmp_path). One root per checkout.
_TEMPROOT = (
    Path(tempfile.gettempdir()) / f"runner-tests-{hashlib.sha1(bytes(ROOT)).hexdigest()[:8]}"
)
_TEMPROOT.mkdir(mode=0o700, exist_ok=True)
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(_TEMPROOT))


# --- one run, several workers ----------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        # The run's own user state (runner.ledger.registry), for module-scoped fixtures;
        # each test gets its own (_own_state_dir). The workers inherit both variables.
        os.environ["RUNNER_STATE_DIR"] = str(shared.open_run_dir() / "runner-state")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not hasattr(session.config, "workerinput"):  # after every worker has ended
        shared.stop_all()


#: Scheduling order of the work units (longest chains first, so that the run's length is
#: the longest unit's, not the sum of the last few): the Docker tests (one engine, which two
#: of them restart: one worker, in order), then the tests bound by SLURM's clock (time
#: limits, preemption: each alone, mostly waiting), then the other slow modules.
def _rank(item: pytest.Item) -> int:
    if item.get_closest_marker("docker"):
        return 0
    if item.get_closest_marker("clock"):
        return 1
    return 2 if item.get_closest_marker("slow") else 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests by :func:`_rank` and, on an xdist worker, record each test's work unit
    for the controller's scheduler (tests/infra/schedule.py): a module's tests run on one
    worker (its module-scoped fixtures are built once), the Docker tests together, and each
    clock-bound test alone."""
    items.sort(key=_rank)  # stable: collection order within a rank
    if hasattr(config, "workerinput"):
        schedule.record_groups({item.nodeid: _group(item) for item in items})


def _group(item: pytest.Item) -> str:
    if item.get_closest_marker("docker"):
        return "docker"
    if item.get_closest_marker("clock"):
        return item.nodeid
    return item.nodeid.split("::")[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` schedules the work units recorded above, in collection order."""
    return schedule.GroupScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


# --- the SLURM cluster and the Docker Engine --------------------------------------------------


_PARTITION: list[str] = []  # this process's, once taken
_PARTITION_LOCK: list[Any] = []  # its lock file, held open until the process ends


def worker_partition() -> str:
    """This process's own SLURM partition (tests/infra/slurm_cluster.sh defines gw0..gw15):
    its jobs go there by default (SBATCH_PARTITION), and cleaning up after a module cancels
    only them, never another worker's, nor another run's (two runs may share the cluster): a
    partition is taken with a lock file held for as long as the process lives."""
    if _PARTITION:
        return _PARTITION[0]
    locks = Path(os.environ.get("RUNNER_SLURM_DIR", "/var/lib/runner-slurm")) / "partitions"
    locks.mkdir(parents=True, exist_ok=True)
    for i in range(16):
        lock = open(locks / f"gw{i}.lock", "w")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _PARTITION_LOCK.append(lock)
        _PARTITION.append(f"gw{i}")
        return _PARTITION[0]
    raise RuntimeError(f"all 16 test partitions are taken (locks in {locks})")


def drain_partition(partition: str | None, timeout_s: float = 60) -> None:
    """Cancel every job in ``partition`` (None: every job) and wait until none is left."""
    where = ["-p", partition] if partition else []
    subprocess.run(["scancel", "--user", "root", *where], timeout=30, check=False)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", *where], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(1)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """The real single-node SLURM cluster, started once per run (by whichever worker needs it
    first) and stopped by the run's controller at its end."""
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root")
    if not shutil.which("sinfo") and not shutil.which("apt-get"):
        pytest.skip("no SLURM client and no apt-get to install one")
    started = time.time()
    # Jobs recovered from an earlier run's state would hold the node.
    shared.ensure("slurm", on_first_start=lambda: drain_partition(None))
    os.environ["SBATCH_PARTITION"] = worker_partition()
    print(f"SLURM cluster up in {time.time() - started:.1f}s")
    yield


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """The suite's own Docker Engine and the local base image, started once per run and
    stopped by the run's controller at its end (one that ran before the run is left on)."""
    if os.geteuid() != 0:
        pytest.skip("starting a Docker Engine needs root")
    if not Path("/usr/sbin/dockerd").exists() and not shutil.which("apt-get"):
        pytest.skip("no dockerd and no apt-get to install docker.io")
    started = time.time()
    old = os.environ.get("DOCKER_HOST")
    shared.ensure("docker", on_first_start=lambda: shared.control("docker", "base-image"))
    import docker

    client = docker.from_env()
    print(f"Docker Engine and base image ready in {time.time() - started:.1f}s")
    try:
        yield client
    finally:
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old


# --- a scratch project -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own user state (runner.ledger.registry: the ledgers a user swept), in
    its process and the runner processes it starts: tests reuse matrix names freely."""
    monkeypatch.setenv("RUNNER_STATE_DIR", str(tmp_path / "runner-state"))


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A scratch working directory (sweeps/, mlruns.db land here), restored afterwards."""
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@pytest.fixture
def write_matrix(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "matrix.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write
