"""Benchmark: what ``runner profile`` costs against training the same steps, and how well its
prediction matches them.

One cell of the CPU ink demo (synthetic scroll volumes as zarr stores, read a patch at a
time over the strided grid; tiny U-Net, Dice + BCE + clDice, batch 2, 32^3 patches): the
recipe's ``profile`` for N steps against ``train`` for the same N steps (``max_steps``;
validated once at the end, logged to a throw-away sqlite MLflow store), both in this
process, in alternation. Reported: the wall time of each (setup included), their ratio, and
the profile's predicted training time for the N steps (its step time x N) against the
training's own measured training time (its epochs' patches / samples_per_s). N = 100
(--quick: 10).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench.common import RESULTS, Options, Outcome, Row, fmt_s, median

OVERRIDES = [
    "data=scroll_demo",
    "model=unet",
    "model.size=tiny",
    "loss=dice_bce_cldice",
    "training.patch_size=[32,32,32]",
    "training.patch_stride=[16,16,16]",
    "training.batch_size=2",
    "training.max_epochs=1000",
    "training.val_interval=1000",
    "training.metrics.surface_dice=true",
]


def _cfg(extra: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from recipes.segmentation import CONFIG_DIR, CONFIG_NAME

    root = RESULTS / "cache" / "demo_scroll"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=[*OVERRIDES, f"data.root={root}", *extra])


def _train(steps: int) -> tuple[float, float]:
    """(wall seconds, seconds spent in training steps per the run's own metrics)."""
    from mlflow.tracking import MlflowClient

    from recipes.segmentation.train import train

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlruns.db"
        extra = [f"training.max_steps={steps}", f"training.checkpoint_dir={tmp}/ckpt",
                 f"tracking.uri={uri}", "tracking.experiment=bench"]  # fmt: skip
        cfg = _cfg(extra)
        start = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - start
        assert result.status == "done", result
        client = MlflowClient(uri)
        [run] = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
        per_epoch = int(run.data.params["budget.epoch_batches"]) * 2  # patches
        rates = client.get_metric_history(run.info.run_id, "samples_per_s")
        done, seconds = 0, 0.0
        for m in sorted(rates, key=lambda m: m.step):
            patches = min(per_epoch, steps * 2 - done)
            seconds += patches / m.value
            done += patches
    return wall, seconds


def _profile(steps: int) -> tuple[float, dict[str, Any]]:
    from recipes.segmentation.profile import profile

    start = time.perf_counter()
    out = profile(_cfg([]), steps)
    assert out["status"] == "ok", out
    return time.perf_counter() - start, out


def run(opts: Options) -> Outcome:
    from recipes.components.data.scroll_demo_data import ensure_scroll_demo

    ensure_scroll_demo(RESULTS / "cache" / "demo_scroll")
    steps = 10 if opts.quick else 100
    repeats = 1 if opts.quick else 2
    profiles, trains = [], []
    for _ in range(repeats):  # alternate, so that load changes hit both
        profiles.append(_profile(steps))
        trains.append(_train(steps))
    p_wall = median([p[0] for p in profiles])
    t_wall = median([t[0] for t in trains])
    predicted = median([p[1]["step_s"] * steps for p in profiles])
    measured = median([t[1] for t in trains])
    last = profiles[-1][1]
    rows = [
        Row(
            f"Profile overhead: profile {steps} steps vs train {steps} steps",
            fmt_s(p_wall),
            fmt_s(t_wall),
            f"{p_wall / t_wall:.2f}×",
            "≤ 1× (info)",
            p_wall <= t_wall * 1.1,
            f"the same cell in this process (setup included; training also validates once and "
            f"logs to MLflow); step {fmt_s(last['step_s'])}, first step (workers, allocator) "
            f"{fmt_s(last['warmup_s'])}",
            {"profile_s": p_wall, "train_s": t_wall, "steps": steps},
        ),
        Row(
            "Profile prediction vs measured training time",
            fmt_s(predicted),
            fmt_s(measured),
            f"{predicted / measured:.2f}×",
            "— (info)",
            None,
            f"the profile's step time x {steps} against the training's own time in its "
            f"{steps} steps (patches / samples_per_s of each epoch)",
            {"predicted_s": predicted, "measured_s": measured},
        ),
    ]
    return Outcome(rows, {"profile": last})
