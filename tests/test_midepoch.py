"""Mid-epoch checkpoints: a run stopped at a step (a real signal sets ``RunContext.stop``, as
the runner's job does on SLURM's time-limit warning or a preemption) or crashed after a
``training.checkpoint_every_steps`` checkpoint continues from that step and ends with the
same per-epoch metrics as a run that never stopped. Real MONAI nets, files, MLflow store.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from recipes.components.data.demo_data import ensure_demo_dataset
from recipes.components.training.checkpoint import LAST
from recipes.components.training.loop import checkpoint_every_steps
from recipes.contract import RunContext, StopRequest
from recipes.segmentation import CONFIG_DIR, CONFIG_NAME
from recipes.segmentation.train import train

pytestmark = pytest.mark.slow

EPOCHS, BATCHES = 2, 6  # 6 training volumes, batch_size 1: 6 optimizer steps an epoch


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("midepoch")
    ensure_demo_dataset(root / "demo", cases=8, size=24)
    return root


def cfg_for(workdir: Path, *overrides: str) -> DictConfig:
    base = [
        f"data.root={workdir / 'demo'}",
        "data.val_fraction=0.25",
        "model.size=tiny",
        "training.patch_size=[16,16,16]",
        "training.samples_per_volume=1",
        "training.batch_size=1",
        f"training.max_epochs={EPOCHS}",
        "training.val_interval=1",
        "training.num_threads=1",
        "scheduler=warmup_cosine",  # per-step schedule: its state must resume too
        "model.dropout_prob=0.2",  # draws from the global RNG every step
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=base + list(overrides))


class SignalAt(StopRequest):
    """Sends this process a real SIGUSR1 when the recipe looks at it for the ``at``-th
    time; the handler, like the runner job's, sets the request. The recipe looks once at the
    start of each epoch and after every optimizer step but an epoch's last."""

    def __init__(self, at: int, crash: bool = False) -> None:
        super().__init__()
        self.at, self.looks, self.crash = at, 0, crash

    def __bool__(self) -> bool:
        self.looks += 1
        if self.looks == self.at:
            if self.crash:  # the process dies here: only what is on disk survives
                raise SystemExit("crash")
            signal.raise_signal(signal.SIGUSR1)  # runs the handler before returning
        return super().__bool__()


@pytest.fixture
def on_sigusr1() -> Iterator[list[StopRequest]]:
    """The SIGUSR1 handler sets the current stop request, as the runner's job does."""
    target: list[StopRequest] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        target[-1].request(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGUSR1, handler)
    yield target
    signal.signal(signal.SIGUSR1, previous)


def epoch_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def new_run(uri: str, name: str) -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("midepoch") or client.create_experiment("midepoch")
    exp_id = exp if isinstance(exp, str) else exp.experiment_id
    return client.create_run(exp_id, run_name=name).info.run_id


def step_look(rng: random.Random) -> tuple[int, int]:
    """A random look that falls inside an epoch: (look number, batches done by then)."""
    looks_per_epoch = BATCHES  # 1 at the start + BATCHES - 1 after steps
    epoch, k = rng.randrange(EPOCHS), rng.randrange(1, BATCHES)
    return epoch * looks_per_epoch + 1 + k, k


def straight_run(workdir: Path, tmp_path: Path, uri: str, *overrides: str) -> str:
    run_id = new_run(uri, "straight")
    ctx = RunContext(uri, run_id, tmp_path / "straight")
    assert train(cfg_for(workdir, *overrides), ctx).status == "done"
    return run_id


def assert_same_epochs(uri: str, a: str, b: str) -> None:
    for key in ("train_loss", "val_dice"):
        ha, hb = epoch_history(uri, a, key), epoch_history(uri, b, key)
        # One value a step: the resumed attempt logged nothing twice.
        assert [s for s, _ in hb] == list(range(1, EPOCHS + 1)), (key, hb)
        assert [s for s, _ in ha] == [s for s, _ in hb]
        for (step, va), (_, vb) in zip(ha, hb, strict=True):
            assert vb == pytest.approx(va, abs=1e-6), f"{key} epoch {step}: {vb} != {va}"


@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_at_a_random_step_resumes_exactly(
    workdir: Path, tmp_path: Path, on_sigusr1: list[StopRequest], workers: int
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    over = [f"training.num_workers={workers}"]
    straight = straight_run(workdir, tmp_path, uri, *over)

    seed = random.randrange(2**32)
    at, batches = step_look(random.Random(seed))
    run_id, ckpt = new_run(uri, "stopped"), tmp_path / "stopped"
    stop = SignalAt(at)
    on_sigusr1.append(stop)
    first = train(cfg_for(workdir, *over), RunContext(uri, run_id, ckpt, stop=stop))
    assert first.status == "interrupted", f"seed {seed}"
    assert first.reason == "signal SIGUSR1"
    saved = torch.load(ckpt / LAST, map_location="cpu", weights_only=True)
    assert saved["in_epoch"]["batches"] == batches, f"seed {seed}"
    assert saved["in_epoch"]["epoch"] == saved["epoch"] + 1

    second = train(cfg_for(workdir, *over), RunContext(uri, run_id, ckpt))
    assert second.status == "done" and second.epochs_completed == EPOCHS
    assert torch.load(ckpt / LAST, weights_only=True)["in_epoch"] is None
    assert_same_epochs(uri, straight, run_id)


def test_crash_after_a_periodic_step_checkpoint_loses_at_most_n_steps(
    workdir: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    every = ["training.checkpoint_every_steps=2"]
    straight = straight_run(workdir, tmp_path, uri, *every)

    # The crash comes after the 5th step of epoch 2 (global step 11): the last step
    # checkpoint is at global step 10, i.e. 4 batches into epoch 2.
    run_id, ckpt = new_run(uri, "crashed"), tmp_path / "crashed"
    crash = SignalAt(BATCHES + 1 + 5, crash=True)
    with pytest.raises(SystemExit):
        train(cfg_for(workdir, *every), RunContext(uri, run_id, ckpt, stop=crash))
    saved = torch.load(ckpt / LAST, map_location="cpu", weights_only=True)
    assert (saved["global_step"], saved["in_epoch"]["batches"]) == (10, 4)

    assert train(cfg_for(workdir, *every), RunContext(uri, run_id, ckpt)).status == "done"
    assert_same_epochs(uri, straight, run_id)


@pytest.mark.parametrize("value", [0, -3, 1.5, "often", True])
def test_checkpoint_every_steps_must_be_a_positive_integer(value: object) -> None:
    cfg = DictConfig({"checkpoint_every_steps": value})
    with pytest.raises(ValueError, match=r"checkpoint_every_steps must be an integer >= 1"):
        checkpoint_every_steps(cfg)


def test_diffusion_stopped_at_a_random_step_resumes_exactly(
    tmp_path: Path, on_sigusr1: list[StopRequest]
) -> None:
    """The diffusion recipe counts steps, not epochs: stopped between two reports, the
    resumed run logs the same windowed train_loss means and validations."""
    from recipes.diffusion import CONFIG_DIR as DIFFUSION_DIR
    from recipes.diffusion.train import train as train_diffusion
    from tests import datasets

    demo = datasets.nnunet(tmp_path / "demo", cases=4, size=16)
    steps = 6

    def cfg() -> DictConfig:
        with initialize_config_dir(str(DIFFUSION_DIR), version_base="1.3"):
            return compose(
                "config",
                overrides=[
                    f"data.root={demo}",
                    "model=medsegdiff_tiny",
                    "training.patch_size=[16,16]",
                    "training.batch_size=2",
                    "training.samples_per_volume=2",
                    f"training.max_steps={steps}",
                    "training.val_every=3",
                    "training.log_every=2",
                    "training.checkpoint_every=100",
                    "training.num_threads=1",
                    "diffusion.sampling_steps=2",
                    "diffusion.num_samples=1",
                ],
            )

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    straight = new_run(uri, "straight")
    assert train_diffusion(cfg(), RunContext(uri, straight, tmp_path / "a")).status == "done"

    seed = random.randrange(2**32)
    at = random.Random(seed).randrange(1, steps)  # the diffusion loop looks once a step
    run_id, ckpt = new_run(uri, "stopped"), tmp_path / "b"
    stop = SignalAt(at)
    on_sigusr1.append(stop)
    first = train_diffusion(cfg(), RunContext(uri, run_id, ckpt, stop=stop))
    assert first.status == "interrupted", f"seed {seed}"
    assert torch.load(ckpt / LAST, weights_only=True)["global_step"] == at
    assert train_diffusion(cfg(), RunContext(uri, run_id, ckpt)).status == "done"
    for key in ("train_loss", "val_dice"):
        want, got = epoch_history(uri, straight, key), epoch_history(uri, run_id, key)
        assert [s for s, _ in got] == [s for s, _ in want] and want, (key, got)
        for (step, value), (_, expected) in zip(got, want, strict=True):
            assert value == pytest.approx(expected, abs=1e-6), f"{key} step {step} seed {seed}"


def test_grid_epoch_stopped_at_a_random_step_resumes_exactly(
    tmp_path: Path, on_sigusr1: list[StopRequest]
) -> None:
    """Epochs over the strided patch grid of zarr volumes (read a patch at a time by two
    workers), capped by ``training.steps_per_epoch`` and ended inside an epoch by
    ``max_steps``: stopped at a random step, the run resumes on the same remaining patches
    and logs what an uninterrupted one logs."""
    from recipes.components.data.scroll_demo_data import ensure_scroll_demo

    root = ensure_scroll_demo(tmp_path / "scroll", shape=(16, 32, 32))
    grid = [
        "data=scroll_demo",
        f"data.root={root}",
        "model.size=tiny",
        "model.dropout_prob=0.2",
        "training.patch_size=[16,16,16]",
        "training.patch_stride=[16,16,8]",  # 2 x 2 x 1 patches a volume, 2 volumes: 8
        "training.batch_size=1",
        "training.steps_per_epoch=6",  # epoch 1: 6 of the 8 patches
        "training.max_steps=11",  # epoch 2: 5 steps, then the run ends
        "training.max_epochs=50",
        "training.val_interval=1",
        "training.num_threads=1",
        "training.num_workers=2",
        "scheduler=warmup_cosine",
    ]

    def cfg() -> DictConfig:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose(CONFIG_NAME, overrides=grid)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    straight = new_run(uri, "straight")
    assert train(cfg(), RunContext(uri, straight, tmp_path / "straight")).status == "done"

    steps = (6, 5)  # looks: 1 at an epoch's start + one after each step but its last
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    epoch = rng.randrange(2)
    k = rng.randrange(1, steps[epoch])
    at = sum(steps[:epoch]) + 1 + k
    run_id, ckpt = new_run(uri, "stopped"), tmp_path / "stopped"
    stop = SignalAt(at)
    on_sigusr1.append(stop)
    first = train(cfg(), RunContext(uri, run_id, ckpt, stop=stop))
    assert first.status == "interrupted", f"seed {seed}"
    saved = torch.load(ckpt / LAST, map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["in_epoch"]["batches"]) == (epoch, k), f"seed {seed}"
    assert saved["global_step"] == 6 * epoch + k

    second = train(cfg(), RunContext(uri, run_id, ckpt))
    assert second.status == "done" and second.epochs_completed == EPOCHS
    assert torch.load(ckpt / LAST, weights_only=True)["global_step"] == 11
    assert_same_epochs(uri, straight, run_id)
