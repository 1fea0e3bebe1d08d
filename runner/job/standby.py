"""A warm standby: a cell's process started before its slot frees, and ready when it does.

A local queue keeps one cell more than it has slots submitted (:mod:`runner.sweep.standby`).
That cell's process pays now what every cell pays before its first step and what does not
depend on the slot: the interpreter, the recipe's imports (torch, MONAI, MLflow,
``torch._dynamo``, which the first optimizer pulls in), Hydra, opening the tracking store.
Then it waits for ``go.json`` in its attempt (:class:`~runner.ledger.Go`), which the queue
writes when a slot frees, with the slot's GPUs and threads; the process takes them on before
anything touches CUDA, and the cell runs as any other from there (its ``status.json``, and so
its run time, starts at the go).

While it waits the cell reads as submitted and writes nothing: a ``runner cancel`` (its
``cancel.json``, then SIGINT) ends the wait and the cell records itself cancelled as a cell
cancelled before its start does; when the queue's process is gone (killed, interrupted)
it leaves without a word, and the ledger reads the cell as pending again
(:meth:`runner.ledger.CellRecord.state`), as it does a claimed cell that never went out.

CUDA picks its devices from ``CUDA_VISIBLE_DEVICES`` once, at its first use. Should an import
of the warm-up ask CUDA anything (none of the recipes' does: tests/test_standby.py checks),
the process starts itself again with the slot's variables (same pid, same job), losing the
warm-up but never using a GPU that is not its own.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from runner.ledger import Attempt, Cancel, Claim, Go, pid_alive

#: How often the waiting process looks for its go (a file's absence: a failed open).
POLL_S = 0.05
#: How long a cancelled standby waits for the cancel's SIGINT, which follows its request.
CANCEL_SIGNAL_S = 5.0
#: How often it checks that the queue that will write it is still there.
SUBMITTER_CHECK_S = 1.0
#: What the warm-up imports besides the recipe's own modules (the optimizer's first step
#: imports torch._dynamo; MLflow's client is what the run is opened with).
IMPORTS = ("torch._dynamo", "mlflow", "hydra")
#: Variables the slot decides, and so the go sets.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class Waiting(Protocol):
    recipe: str
    overrides: list[str]
    tracking_uri: str
    workdir: str


def wait(job: Waiting, attempt: Attempt) -> None:
    """Warm up, then return when the cell may run: on its go (its slot's settings taken on),
    or on a cancel request (the cell then records itself cancelled). Leaves the process when
    the queue that submitted it is gone first, warm or not."""
    watch = QueueWatch(attempt)
    try:
        _wait(job, attempt, watch)
    except KeyboardInterrupt:  # SIGINT: `runner cancel` (or an interrupt nothing asked for)
        if attempt.load(Cancel) is None:
            raise
        # A cancel: the cell records itself cancelled (CellJob._run).
    finally:
        watch.stop()


def _wait(job: Waiting, attempt: Attempt, watch: QueueWatch) -> None:
    began = time.monotonic()
    touched = warm_up(job)
    cuda = "CUDA asked during them: restarts at its go" if touched else "CUDA untouched"
    _say(f"ready after {time.monotonic() - began:.1f} s (imports done; {cuda}); waiting for a slot")
    while True:
        go = attempt.load(Go)
        if go is not None and watch.going():
            _say(f"go: a slot is free (GPUs {go.gpus or 'none'}, threads {go.threads})")
            take_on(go, touched)
            return
        if attempt.load(Cancel) is not None:
            # `runner cancel` writes its request, then interrupts the process: take the
            # interrupt here (wait() turns it into the cancel), not in the run's first lines,
            # before the part of it that records an outcome.
            time.sleep(CANCEL_SIGNAL_S)
            return
        time.sleep(POLL_S)


class QueueWatch:
    """A thread that ends the process when the queue that claimed the cell (its claim's pid)
    is gone before the cell's go: nothing was recorded, and the cell reads pending again."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        claim = attempt.load(Claim)
        self.pid = claim.pid if claim is not None else None
        self.lock = threading.Lock()
        self.went = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="queue-watch")
        if self.pid:
            self._thread.start()

    def going(self) -> bool:
        """Mark the cell as started (True): from here on a gone queue changes nothing."""
        with self.lock:
            self.went = True
        return True

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(SUBMITTER_CHECK_S):
            if self.pid and not pid_alive(self.pid):
                with self.lock:
                    if self.went or self.attempt.load(Go) is not None:
                        return  # the go came first: the cell runs
                    _say("its queue is gone before a slot freed: leaving, the cell not started")
                    os._exit(0)


def _say(text: str) -> None:
    print(f"standby: {text}", file=sys.stderr, flush=True)


def warm_up(job: Waiting) -> bool:
    """Import and open what the cell will: its recipe's modules, MLflow, Hydra, the store.
    Anything that fails here is left for the run itself to meet and record. True when an
    import asked CUDA something (its device list may then be set already)."""
    from runner import tracking
    from runner.recipe import Recipe

    with contextlib.suppress(OSError):
        os.chdir(job.workdir)  # where the run will be (CellJob._run)
    with _cuda_watch() as asked:
        with contextlib.suppress(Exception):
            recipe = Recipe.load(job.recipe)
            recipe.train_fn()
            recipe.compose(job.overrides)  # Hydra's and OmegaConf's own first-use costs
        for name in IMPORTS:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        if job.tracking_uri.startswith("sqlite:"):  # a server's client opens nothing
            with contextlib.suppress(Exception):
                tracking.open_store(job.tracking_uri)
    return bool(asked)


def take_on(go: Go, touched: bool) -> None:
    """Take on the slot's GPUs and threads; when CUDA may have read the device list already,
    start the process again with them (same pid: the executor still sees its job)."""
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in go.gpus)}
    if go.threads:
        env.update({name: str(go.threads) for name in THREAD_VARS})
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    os.environ.update(env)
    if touched and "CUDA_VISIBLE_DEVICES" in changed:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], dict(os.environ))
    if go.threads and "torch" in sys.modules:
        import torch

        torch.set_num_threads(go.threads)


@contextlib.contextmanager
def _cuda_watch() -> Iterator[list[str]]:
    """Record the calls that would make CUDA read its device list (a CUDA build's
    ``cudaGetDeviceCount``, and the Python functions that lead to it) while the block runs;
    a module that kept one of them (``from torch.cuda import is_available``) keeps a wrapper
    that stops noting at the block's end."""
    import torch

    asked: list[str] = []
    open_ = [True]
    targets: list[tuple[Any, str]] = [
        (torch.cuda, "is_available"),
        (torch.cuda, "device_count"),
        (torch.cuda, "_lazy_init"),
        (torch.cuda, "init"),
    ]
    if hasattr(torch._C, "_cuda_getDeviceCount"):
        targets.append((torch._C, "_cuda_getDeviceCount"))
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]

    def noting(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if open_[0]:
                asked.append(name)
            return fn(*args, **kwargs)

        return call

    for owner, name, fn in originals:
        setattr(owner, name, noting(fn, name))
    try:
        yield asked
    finally:
        open_[0] = False
        for owner, name, fn in originals:
            setattr(owner, name, fn)
