"""Benchmark 5: the recipe's DataLoader against the model's appetite.

Loader throughput: patches/s out of the recipe's own train DataLoader on the demo dataset at
the default patch size (volumes cached in memory as the recipe caches them; random crops,
flips and intensity augmentation per batch; ``num_workers`` as configured, 0 by default).
Model consumption: patches/s of the trainer's step on ready tensors. Epochs of the two
alternate in one process. With ``num_workers=0`` loading and compute take turns, so the
loader's share of an epoch is also reported.
"""

from __future__ import annotations

from bench.common import Options, Outcome, Row, interleave, median
from bench.trainer import setup
from bench.workbench import loader_batches, workbench


def run(opts: Options) -> Outcome:
    wb = workbench(opts.quick, opts.smoke)
    loader = wb.data.train_loader
    epoch = [0]

    def load_epoch() -> None:
        epoch[0] += 1  # a new shuffle and augmentation per epoch, as train() does
        wb.data.set_epoch(epoch[0])
        for _batch in loader:
            pass

    steps = 3 if opts.quick else len(wb.batches)
    recipe, _, _ = setup(wb, None, loader_batches(wb, steps))
    t_load, t_model = interleave(load_epoch, recipe, 1 if opts.smoke else 2 if opts.quick else 4)
    per_epoch = len(loader.dataset) * int(wb.cfg.training.samples_per_volume)
    loader_rate = per_epoch / median(t_load)
    model_rate = steps * wb.patches_per_step / median(t_model)
    ratio = loader_rate / model_rate
    bottleneck = "the model (compute)" if ratio > 1 else "the DataLoader"
    # Serial loading (num_workers=0): per patch, the loader's time then the model's.
    share = (1 / loader_rate) / (1 / loader_rate + 1 / model_rate)
    workers = int(wb.cfg.training.num_workers)
    rows = [
        Row(
            "Data: loader vs model throughput",
            f"{loader_rate:.1f} patches/s",
            f"{model_rate:.1f} patches/s",
            f"{ratio:.2f}×",
            "— (info)",
            None,
            f"bottleneck: {bottleneck}; {per_epoch} patches/epoch of "
            f"{list(wb.cfg.training.patch_size)}, num_workers={workers}",
            {"loader_patches_s": loader_rate, "model_patches_s": model_rate, "ratio": ratio},
        ),
        Row(
            "Data: loading share of an epoch (num_workers=0)"
            if workers == 0
            else f"Data: loading share if serial (num_workers={workers})",
            f"{share:.0%}",
            "—",
            "—",
            "— (info)",
            None,
            "loading and training take turns in one process",
            {"share": share, "loader_epochs_s": t_load, "model_blocks_s": t_model},
        ),
    ]
    return Outcome(rows, {"bottleneck": bottleneck})
