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


def per_class_vs_baseline(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Per-class Dice of each group beside the baseline's (bars: mean, whiskers: ± std)."""
    plt = _plt()
    classes = list(dict.fromkeys(r["class"] for r in rows))
    first = rows[0]
    series: dict[str, dict[str, tuple[float, float]]] = {
        f"baseline ({first['baseline']})": {
            r["class"]: (r["baseline_mean"], r["baseline_std"]) for r in rows
        }
    }
    for r in rows:
        series.setdefault(r["group"], {})[r["class"]] = (r["mean"], r["std"])
    width = 0.8 / len(series)
    width_in = max(5.0, 2.5 + 0.35 * len(classes) * len(series))
    fig, ax = plt.subplots(figsize=(width_in, 3.8))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(classes))]
        means = [_num(values.get(c, (None, None))[0]) for c in classes]
        stds = [_num(values.get(c, (None, None))[1], 0.0) for c in classes]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=name, hatch="//" if k == 0 else None)
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    source = "test" if first["source"] == "test" else "best val"
    ax.set_ylabel(f"{source} Dice (mean ± std over seeds)")
    ax.set_title(f"per-class {source} Dice vs the baseline", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = out_dir / "per_class_vs_baseline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(value: float | None, default: float = float("nan")) -> float:
    return default if value is None or value != value else float(value)
