"""The command of a DDP cell's container: the N ranks of one submitit job.

``python -u -m runner.executors.docker.ranks <submitit folder> <N> [grace_s]``

A container runs one command; ``executor.gpus_per_cell: N`` needs N processes in it. This
launcher starts N ``python -u -m submitit.core._submit <folder>`` processes with submitit's
local task variables (``SUBMITIT_LOCAL_NTASKS=N``, rank k's ``LOCALID``/``GLOBALID=k``, one
node), so that :func:`runner.job.cell.distributed_env` (submitit's
``TorchDistributedEnvironment``) gives them RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT. The job
id stays the container's (``SUBMITIT_LOCAL_JOB_ID``, exported by the engine's entry
script), so rank 0's log and result are where submitit's Job looks (``<id>_0_*``: rank 0
inherits this process's output, already redirected there) and rank k writes
``<id>_k_log.out/err``.

* Signals: SIGINT (``runner cancel``: cancelled) and SIGTERM (``docker stop``, a daemon
  stopping: lost) go to every rank at once, as the local and SLURM executors deliver them,
  so that the ranks unwind together (they leave the group with a barrier).
* A rank that fails, or rank 0 ending, gives the others ``grace_s`` to end on their own (a
  failed peer breaks the group's next collective; rank 0 records the outcome); then they
  are SIGKILLed: a rank left waiting in a collective would otherwise hold the container
  until ``training.ddp_timeout_min``.
* The container exits with rank 0's code (128 + signal when it was killed): rank 0 alone
  owns the cell's outcome.

Not submitit's own local Controller (``submitit.local._local``): it names the job after its
own pid (``SUBMITIT_LOCAL_JOB_ID``, hence the log and result paths) where the docker
executor's job id is the container's, forwards SIGTERM only, and waits for every task
however long a peer of a failed one hangs. Standard library only: it runs in the image.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

#: How long the other ranks may run on once rank 0 has ended or a rank has failed: more
#: than the 60 s a gloo rank waits for its peers when it leaves the group (recipes'
#: ``Dist.close``), so that rank 0 records a peer's failure before anything is killed.
GRACE_S = 90.0
POLL_S = 0.1
FORWARDED = (signal.SIGINT, signal.SIGTERM)


def free_port() -> int:
    """A free TCP port for the group's store: with ``network: host`` the containers share
    the host's ports, so submitit's port (a hash of the job id) could be taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(base: dict[str, str], rank: int, ranks: int, port: int) -> dict[str, str]:
    """Rank ``rank``'s environment: submitit's local task variables, one node."""
    return {
        **base,
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_NTASKS": str(ranks),
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_LOCALID": str(rank),
        "SUBMITIT_LOCAL_GLOBALID": str(rank),
        "MASTER_PORT": base.get("MASTER_PORT") or str(port),
    }


def _say(text: str) -> None:
    print(f"ranks: {text}", file=sys.stderr, flush=True)


def launch(folder: Path, ranks: int, command: list[str], grace_s: float = GRACE_S) -> int:
    """Run ``command`` as ``ranks`` ranks (see the module's docstring); rank 0's exit code."""
    job_id = os.environ["SUBMITIT_LOCAL_JOB_ID"]
    procs: list[subprocess.Popen[bytes]] = []
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    port = free_port()
    logs: list[IO[Any]] = []
    try:
        for k in range(ranks):
            out: IO[Any] | None = None
            err: IO[Any] | None = None
            if k:  # rank 0 writes to this process's output: <id>_0_log.out/err
                out = open(folder / f"{job_id}_{k}_log.out", "a")  # noqa: SIM115 - closed below
                err = open(folder / f"{job_id}_{k}_log.err", "a")  # noqa: SIM115
                logs += [out, err]
            env = rank_env(dict(os.environ), k, ranks, port)
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
            for signum in received:  # a signal that came while the ranks were starting
                procs[-1].send_signal(signum)
        deadline: float | None = None
        while None in (codes := [p.poll() for p in procs]):  # every rank polled (reaped)
            if deadline is None:
                ended = [(k, rc) for k, rc in enumerate(codes) if rc is not None]
                why = [f"rank {k} exited with {rc}" for k, rc in ended if k == 0 or rc != 0]
                if why:
                    deadline = time.monotonic() + grace_s
                    _say(f"{'; '.join(why)}: the other ranks have {grace_s:.0f} s to end")
            elif time.monotonic() > deadline:
                alive = [k for k, p in enumerate(procs) if p.poll() is None]
                _say(f"killing rank(s) {alive}: still running {grace_s:.0f} s later")
                for k in alive:
                    procs[k].kill()
                for k in alive:
                    procs[k].wait()
                break
            time.sleep(POLL_S)
    finally:
        for p in procs:  # this launcher failing must not leave ranks behind
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    code = procs[0].returncode
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(f"usage: python -m {__spec__.name if __spec__ else 'ranks'} FOLDER N [GRACE_S]")
        return 2
    folder, ranks = Path(argv[0]), int(argv[1])
    grace = float(argv[2]) if len(argv) == 3 else GRACE_S
    command = [sys.executable, "-u", "-m", "submitit.core._submit", str(folder)]
    return launch(folder, ranks, command, grace)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
