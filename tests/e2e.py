"""Helpers for end-to-end tests: a tiny synthetic dataset, matrices that train in seconds,
and a real ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

# Small enough that one cell trains in a few seconds on one CPU thread.
TINY = [
    "training.max_epochs=2",
    "training.val_interval=1",
    "training.batch_size=1",
    "training.samples_per_volume=1",
    "training.patch_size=[16,16,16]",
    "training.num_threads=1",
    # The CPU-sized networks (the recipes default to the published sizes).
    "model.size=tiny",
]


#: How a process is started: from a terminal (default dispositions), or the way a script's
#: ``cmd &``, nohup, cron or a CI runner starts it: SIGINT ignored, inherited by every child.
STARTS = ["terminal", "sigint_ignored"]


def start_as(how: str) -> Callable[[], None]:
    """A ``preexec_fn`` that starts a child as ``how`` (one of STARTS), whatever disposition
    the test process itself has: a suite started by a script (SIGINT ignored) must still
    start its "terminal" children with SIGINT at its default."""
    disposition = signal.SIG_DFL if how == "terminal" else signal.SIG_IGN

    def start() -> None:
        signal.signal(signal.SIGINT, disposition)

    return start


def processes_of(root_pid: int) -> list[int]:
    """``root_pid`` and every live process below it (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z":
                parents[int(entry.name)] = int(stat[1])
    out = [root_pid] if root_pid in parents else []
    frontier = [root_pid]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        out.extend(frontier)
    return out


def make_tiny_dataset(root: Path) -> Path:
    from recipes.components.data.demo_data import ensure_demo_dataset

    return ensure_demo_dataset(root, cases=6, size=24, seed=0)


def hold_out(root: Path, cases: Mapping[str, str] | Sequence[str], copy: bool = False) -> None:
    """Put demo cases (both channels and the label) in nnU-Net's test folders, imagesTs and
    labelsTs (made here): moved out of imagesTr / labelsTr, or with ``copy`` copied; a
    mapping gives each case its name there."""
    names = dict(cases) if isinstance(cases, Mapping) else {case: case for case in cases}
    put = shutil.copy if copy else shutil.move
    for sub in ("imagesTs", "labelsTs"):
        (root / sub).mkdir()
    for case, name in names.items():
        for c in (0, 1):
            put(
                root / "imagesTr" / f"{case}_{c:04d}.nii.gz",
                root / "imagesTs" / f"{name}_{c:04d}.nii.gz",
            )
        put(root / "labelsTr" / f"{case}.nii.gz", root / "labelsTs" / f"{name}.nii.gz")


def matrix_text(
    name: str,
    data_root: Path,
    axes: str,
    executor: str,
    uri: str,
    extra_base: list[str] | None = None,
) -> str:
    base = ["data=demo", f"data.root={data_root}", *TINY, *(extra_base or [])]
    return (
        f"name: {name}\nrecipe: segmentation\nbase: {base!r}\naxes:\n{axes}\n"
        f"executor: {executor}\ntracking: {{uri: '{uri}'}}\n"
    )


def run_cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``runner ARGS`` as a user types it, in ``cwd``, with no terminal and no stdin."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def background_runner(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m runner ARGS`` as a script starts it: its own session, no stdin, output
    piped (read it with ``communicate``)."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mlflow_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """A real ``mlflow server`` bound to 127.0.0.1, stopped on exit."""
    port = port or free_port()
    log = open(workdir / f"mlflow-server-{port}.log", "w")  # noqa: SIM115 - closed below
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{workdir / 'server.db'}",
        "--default-artifact-root",
        (workdir / "server-artifacts").as_uri(),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "mlflow server did not start: "
                        + (workdir / f"mlflow-server-{port}.log").read_text()[-2000:]
                    ) from exc
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
