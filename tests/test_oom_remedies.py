"""Out of memory gets a remedy (issue 30): reasons that tell GPU from host memory with the
kernel's evidence, the matrix's ``on_oom`` policy applied by ``resume --only oom`` and at once
(``auto``), and the proof that halving the micro-batch and doubling the accumulation trains the
same. Real parts: a memory cgroup whose limit a loader worker exceeds (the kernel's OOM killer
kills it), the CPU allocator refusing a real allocation, real MONAI nets and MLflow stores. A
CUDA OOM can't be produced without a GPU: its message is injected, beside the real host tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from recipes.components.data.demo_data import ensure_demo_dataset
from recipes.components.training.checkpoint import LAST
from recipes.contract import RunContext, StopRequest
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
from recipes.segmentation.train import train
from runner.cli import main
from runner.job import memory
from runner.job.process import failure_reason
from runner.ledger import Remedy, Status
from runner.matrix.on_oom import STEPS, OnOom
from runner.plan import make_plan
from runner.sweep import remedies
from tests.conftest import ROOT
from tests.e2e import make_tiny_dataset, matrix_text

MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


# --- item 1: which memory, and the evidence ------------------------------------------------


def test_cpu_allocator_refusal_reads_host_with_the_size() -> None:
    """A real refusal: 4 TiB is more than this machine's memory and swap."""
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**42, dtype=torch.uint8)
    reason = failure_reason(caught.value, memory.snapshot())
    assert reason.startswith("oom: host: the CPU allocator refused 4096.00 GiB"), reason
    assert "peak RSS" in reason
    assert memory.oom_kind(reason) == "host"


def test_cuda_oom_reads_gpu_with_the_failed_allocation() -> None:
    """Injected (no GPU here): the message PyTorch's caching allocator raises."""
    text = (
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "79.15 GiB of which 1.06 GiB is free. Of the allocated memory 75.2 GiB is allocated "
        "by PyTorch"
    )
    reason = failure_reason(torch.cuda.OutOfMemoryError(text))
    assert (
        reason == "oom: gpu: tried to allocate 2.00 GiB; on GPU 0 (total 79.15 GiB, 1.06 GiB free)"
    )
    assert memory.oom_kind(reason) == "gpu"
    # Reasons recorded before kinds existed still read as one.
    assert memory.oom_kind("oom: CUDA out of memory. Tried") == "gpu"
    assert memory.oom_kind("oom: DefaultCPUAllocator: can't allocate memory") == "host"
    assert memory.oom_kind("exception: ValueError: out") is None


WORKER_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from torch.utils.data import DataLoader, Dataset
    from runner.job import memory
    from runner.job.process import failure_reason

    class Items(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if sys.argv[1] == "hog":  # 2 GiB written: past the cgroup's limit
                return torch.ones(2**29).sum()
            os.kill(os.getpid(), signal.SIGKILL)  # killed by hand, not for memory

    start = memory.snapshot()
    try:
        for _ in DataLoader(Items(), num_workers=1):
            pass
    except Exception as exc:
        print("REASON", failure_reason(exc, start))
    """
)


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A memory cgroup (v1) limited to 768 MiB; removed afterwards."""
    if not (MEMORY_CGROUPS / "memory.limit_in_bytes").exists() or not os.access(
        MEMORY_CGROUPS, os.W_OK
    ):
        pytest.skip("needs a writable cgroup v1 memory hierarchy (root)")
    group = MEMORY_CGROUPS / f"runner-oom-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(768 * 2**20))
    yield group
    group.rmdir()


def _in_cgroup(group: Path, mode: str) -> str:
    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    out = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, mode],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=enter,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("REASON ")]
    assert lines, out.stdout + out.stderr
    return lines[-1].removeprefix("REASON ")


@pytest.mark.slow
def test_loader_worker_killed_by_the_oom_killer_reads_host(memory_cgroup: Path) -> None:
    """A real OOM kill: the worker's 2 GiB exceed the cgroup's 768 MiB; torch says only that
    the worker died, the cgroup's OOM-kill counter says why. A worker killed by hand is not
    an OOM."""
    reason = _in_cgroup(memory_cgroup, "hog")
    assert reason.startswith("oom: host: DataLoader worker (pid "), reason
    assert "the kernel's OOM killer: 1 OOM kill(s) in memory cgroup /runner-oom-" in reason
    assert "limit 768.00 MiB" in reason
    killed = _in_cgroup(memory_cgroup, "kill")
    assert killed.startswith("exception: RuntimeError: DataLoader worker"), killed


# --- item 2: the policy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "demo")


def _matrix(path: Path, tiny_data: Path, on_oom: str, axes: str, extra: list[str]) -> Path:
    uri = f"sqlite:///{path.parent / 'mlruns.db'}"
    text = matrix_text(path.stem, tiny_data, axes, "{kind: debug}", uri, extra)
    path.write_text(text + f"on_oom: {on_oom}\n")
    return path


def test_policy_picks_the_next_step_that_applies(tmp_path: Path, tiny_data: Path) -> None:
    """GPU steps for a GPU OOM, loader steps first for a host OOM, a step that doesn't apply
    passed over with why, a step that changes the inputs starts from scratch, max_tries."""
    steps = "[grad_checkpointing, smaller_patch, halve_batch, fewer_workers]"
    path = _matrix(
        tmp_path / "policy.yaml",
        tiny_data,
        f"{{max_tries: 2, steps: {steps}}}",
        "  model: [unet]",
        ["training.batch_size=2", "training.num_workers=2"],
    )
    plan = make_plan(path)
    (cell,) = plan.cells
    record = plan.ledger.cell(cell.id)

    def fail(reason: str) -> remedies.Decision:
        """Claim the next attempt as a resume does, then record it out of memory."""
        decision = remedies.decide(plan, cell, record) if record.attempts() else None
        attempt = record.claim("debug", len(record.attempts()))
        assert attempt is not None
        if decision is not None:
            remedies.apply(plan, cell, decision, attempt)
        attempt.save(Status(state="failed", reason=reason, ended=time.time()))
        return remedies.decide(plan, cell, record)

    first = fail("oom: gpu: tried to allocate 2.00 GiB")
    assert first.remedy is not None and first.remedy.added == "grad_checkpointing"
    assert first.overrides == ["training.grad_checkpointing=true"]
    # Attempt 2 ran with checkpointing; 16^3 patches can't halve to multiples of 16.
    second = fail("oom: gpu: tried to allocate 1.00 GiB")
    assert second.remedy is not None and second.remedy.added == "halve_batch"
    assert "no side halves" in second.remedy.skipped["smaller_patch"]
    assert second.remedy.changed == {
        "training.batch_size": [2, 1],
        "training.accumulate_steps": [1, 2],
    }
    assert second.overrides == [
        "training.grad_checkpointing=true",
        "training.batch_size=1",
        "training.accumulate_steps=2",
    ]
    assert record.attempt(2).load(Remedy).steps == ["grad_checkpointing"]  # type: ignore[union-attr]
    third = fail("oom: gpu: again")
    assert third.remedy is None and third.refusal is not None
    assert "after 2 remedies" in third.refusal and "max_tries=2" in third.refusal

    # A host OOM of another cell: the loader's step comes first.
    host = _matrix(
        tmp_path / "host.yaml",
        tiny_data,
        f"{{steps: {steps}}}",
        "  model: [unet]",
        ["training.num_workers=2"],
    )
    hplan = make_plan(host)
    (hcell,) = hplan.cells
    hrecord = hplan.ledger.cell(hcell.id)
    hattempt = hrecord.claim("debug", 0)
    assert hattempt is not None
    hattempt.save(Status(state="failed", reason="oom: host: DataLoader worker (pid 7) killed"))
    decision = remedies.decide(hplan, hcell, hrecord)
    assert decision.remedy is not None and decision.remedy.added == "fewer_workers"
    assert decision.overrides == ["training.num_workers=1"]


@pytest.mark.slow
def test_resume_applies_remedies_until_none_is_left(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real host OOM (a 1e6-channel conv the CPU allocator refuses), retried at once with
    each remedy (auto) until max_tries: every attempt records its remedies, the MLflow run is
    tagged and holds the changed values as params, status shows them, and resume then
    refuses rather than fail the same way again."""
    path = _matrix(
        tmp_path / "auto.yaml",
        tiny_data,
        "{auto: true, max_tries: 2, steps: [fewer_workers, halve_batch, smaller_val_batch]}",
        "  model: [segresnet]\n  model.init_filters: [1000000]",
        ["training.batch_size=2"],
    )
    assert main(["sweep", str(path)]) == 1
    assert "submitted 1 cells" in capsys.readouterr().out  # one cell, three attempts
    plan = make_plan(path)
    (cell,) = plan.cells
    record = plan.ledger.cell(cell.id)
    state = record.state()
    assert (state.state, state.attempts) == ("failed", 3)
    assert state.reason.startswith("oom: host: the CPU allocator refused")
    assert state.remedy == ["halve_batch", "smaller_val_batch"]
    history = record.history()
    assert [h["remedy"] for h in history] == [
        [],
        ["halve_batch"],
        ["halve_batch", "smaller_val_batch"],
    ]
    second = record.attempt(2).load(Remedy)
    assert second is not None and second.added == "halve_batch"
    assert second.skipped == {"fewer_workers": "training.num_workers is 0"}
    assert second.after is not None and second.after.startswith("oom: host")
    run = MlflowClient(plan.tracking_uri).get_run(state.run_id)
    assert run.data.tags["runner.remedy"] == "halve_batch+smaller_val_batch"
    assert run.data.params["remedy.2.training.batch_size"] == "1"
    assert run.data.params["remedy.2.training.accumulate_steps"] == "2"
    assert run.data.params["remedy.3.training.sw_batch_size"] == "2"
    capsys.readouterr()

    assert main(["status", str(path)]) == 0
    assert "halve_batch+smaller_val_batch" in capsys.readouterr().out
    assert main(["resume", "--only", "oom", str(path)]) == 0
    err = capsys.readouterr().err
    assert "not resumed: out of host memory again after 2 remedies" in err
    assert record.state().attempts == 3  # nothing ran again


# --- item 3: the same training -------------------------------------------------------------


class CrashAt(StopRequest):
    """The process dies at the recipe's ``at``-th look (once an epoch and after every
    optimizer step but an epoch's last), as an OOM kills it: only the disk survives."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.looks = at, 0

    def __bool__(self) -> bool:
        self.looks += 1
        if self.looks == self.at:
            raise SystemExit("killed")
        return super().__bool__()


def _cfg(data: Path, *overrides: str) -> DictConfig:
    base = [
        f"data.root={data}",
        "data.val_fraction=0.25",
        "model.size=tiny",  # segresnet: group norm, per sample like instance norm
        "loss.batch=false",  # Dice per sample: a batch-wide Dice depends on the batch
        "training.patch_size=[16,16,16]",
        "training.samples_per_volume=1",
        "training.max_epochs=2",
        "training.val_interval=1",
        "training.num_threads=1",
        "training.checkpoint_every_steps=1",
        "scheduler=warmup_cosine",  # per optimizer step: the schedule must stay the same
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=base + list(overrides))


def _history(uri: str, run_id: str, key: str) -> list[float]:
    return [
        m.value
        for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)
    ]


@pytest.mark.slow
def test_halved_batch_resumed_from_a_checkpoint_trains_the_same(tmp_path: Path) -> None:
    """6 training volumes: batches of 2 (3 optimizer steps an epoch) straight through, against
    a run killed in epoch 2 (its second step undone) and resumed from the step checkpoint with
    halve_batch (batches of 1, accumulate 2: the same 3 steps). Per-sample norms and loss
    make the gradients the same sums in another order: float32 rounding (2.8e-8 relative on
    epoch 2's loss when measured), so 1e-5; the LR schedule is the same step for step."""
    data = tmp_path / "demo"
    ensure_demo_dataset(data, cases=8, size=24)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("same")
    straight = client.create_run(exp, run_name="straight").info.run_id
    original = ["training.batch_size=2", "training.accumulate_steps=1"]
    done = train(_cfg(data, *original), RunContext(uri, straight, tmp_path / "a"))
    assert done.status == "done"

    remedied, ckpt = client.create_run(exp, run_name="remedied").info.run_id, tmp_path / "b"
    with pytest.raises(SystemExit):
        # Look 6: epoch 2's third, after step 2 and before its checkpoint; step 1's is on disk.
        train(_cfg(data, *original), RunContext(uri, remedied, ckpt, stop=CrashAt(3 + 3)))
    saved = torch.load(ckpt / LAST, map_location="cpu", weights_only=True)
    assert (saved["in_epoch"]["batches"], saved["in_epoch"]["batch_size"]) == (1, 2)
    halved = ["training.batch_size=1", "training.accumulate_steps=2"]
    again = train(_cfg(data, *halved), RunContext(uri, remedied, ckpt))
    assert again.status == "done" and again.epochs_completed == 2

    assert _history(uri, remedied, "lr") == _history(uri, straight, "lr")
    for key in ("train_loss", "val_dice"):
        a, b = _history(uri, straight, key), _history(uri, remedied, key)
        assert len(a) == len(b) == 2, (key, a, b)
        assert b == pytest.approx(a, rel=1e-5), key
    # The checkpoint's 1 batch of 2 is 2 batches of 1; a size that can't continue is refused.
    from recipes.components.training.loop import EpochState, rebatched

    with pytest.raises(ValueError, match="batches of 2 cannot continue"):
        rebatched(EpochState(2, batches=3, batch_size=1), 2)


@pytest.mark.slow
def test_local_cell_killed_by_the_oom_killer_reads_host(
    memory_cgroup: Path, tmp_path: Path, tiny_data: Path
) -> None:
    """A real OOM kill of a local cell's own process: the sweep runs in a memory cgroup of
    1.5 GiB and the cell builds a network whose 7 GiB of weights the kernel grants (overcommit)
    but can't back once they are written. The process just vanishes; the executor's end
    reason reads the cgroup's OOM-kill counter kept since the cell's start."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = tmp_path / "killed.yaml"
    axes = "  model: [segresnet]\n  model.init_filters: [8192]"
    path.write_text(matrix_text("killed", tiny_data, axes, "{kind: local, slots: 1}", uri))
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(1536 * 2**20))

    def enter() -> None:
        (memory_cgroup / "cgroup.procs").write_text(str(os.getpid()))

    out = subprocess.run(
        [sys.executable, "-m", "runner", "sweep", str(path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        preexec_fn=enter,
        check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    plan = make_plan(path)
    state = plan.states()[plan.cells[0].id]
    assert state.state == "failed", state
    assert state.reason is not None and state.reason.startswith("oom: host: the cell's process")
    assert "OOM kill(s) in memory cgroup /runner-oom-" in state.reason
    assert "limit 1.50 GiB" in state.reason


def test_readme_on_oom_example_is_a_valid_policy() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Out of memory", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    policy = OnOom(**yaml.safe_load(block)["on_oom"])
    assert (policy.auto, policy.max_tries) == (True, 2)
    table = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert table == set(STEPS)  # every step documented, none that doesn't exist
    assert all(
        f"| `{n}` | {s.memory} | {'resumed' if s.resumes else 'fresh'} |" in section
        for n, s in STEPS.items()
    )


def test_slurm_out_of_memory_reads_host_with_the_mem_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: the test cluster doesn't enforce --mem with cgroups, so sacct's
    OUT_OF_MEMORY can't be produced here; the state sacct would give is handed in."""
    from runner.executors.slurm import backend as slurm

    ends = {"41": ("OUT_OF_MEMORY", "0:125"), "42": ("TIMEOUT", "0:0")}
    monkeypatch.setattr(slurm, "job_ends", lambda ids: ({i: ends[i] for i in ids}, None))
    options = slurm.SlurmExecutorOptions(kind="slurm", mem_gb=4)
    got, problem = slurm.SlurmBackend(options, tmp_path).ended(["41", "42"])
    assert problem is None
    assert got["41"].reason.startswith("oom: host: slurm: OUT_OF_MEMORY (exit 0:125); --mem 4G")
    assert memory.oom_kind(got["41"].reason) == "host"
    assert got["42"].reason.startswith("timeout: slurm: TIMEOUT")  # other ends unchanged
