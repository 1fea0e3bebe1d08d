"""Report figures as PNG (matplotlib, no display needed): best val Dice per axis value as
box + strip plots, and mean learning curves per group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.report.stats import Group


def _plt() -> Any:  # the pyplot module, imported with a headless backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dice_by_axis(groups: list[Group], out_dir: Path) -> list[Path]:
    """One figure per axis: every cell's best val Dice for each value of that axis."""
    plt = _plt()
    axes = list(dict.fromkeys(k for g in groups for k in g.values))
    paths = []
    for axis in axes:
        by_value: dict[str, list[float]] = {}
        for g in groups:
            if axis in g.values:
                by_value.setdefault(str(g.values[axis]), []).extend(c.best for c in g.cells)
        if len(by_value) < 2:
            continue
        fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(by_value), 3.6))
        labels = list(by_value)
        ax.boxplot([by_value[v] for v in labels], showfliers=False)
        for i, v in enumerate(labels, start=1):
            ys = by_value[v]
            xs = [i + 0.08 * ((j % 5) - 2) for j in range(len(ys))]  # deterministic jitter
            ax.scatter(xs, ys, s=14, alpha=0.7)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
        ax.set_ylabel("best val Dice")
        ax.set_title(f"best val Dice by {axis}")
        fig.tight_layout()
        path = out_dir / f"dice_by_{axis.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def learning_curves(groups: list[Group], out_dir: Path) -> Path:
    """Mean val Dice per epoch for each group (the mean over its seeds)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for g in groups:
        per_epoch: dict[int, list[float]] = {}
        for c in g.cells:
            for epoch, value in c.curve:
                per_epoch.setdefault(epoch, []).append(value)
        epochs = sorted(per_epoch)
        ax.plot(
            epochs,
            [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs],
            marker="o",
            ms=3,
            label=f"{g.label} (n={g.n})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("val Dice (mean over seeds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out_dir / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
