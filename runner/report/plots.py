"""Report figures as PNG (matplotlib, no display needed), made to read at a glance:

- ``dice_by_<axis>.png``: every cell's best val Dice for each value of one axis (box + one
  point per cell), saying what it pools over (``pooled over loss × seed``), with the axis as x
  label and n under each box; the points take their group's colour;
- ``learning_curves.png``: each group's mean val Dice per epoch with a ± std band over its
  seeds;
- ``per_class_vs_baseline.png``: per-class Dice of each group beside the baseline's.

One colour per group in every figure (:func:`group_colors`), at ``DPI`` dots per inch. The
``*_figure`` functions return the matplotlib Figure (tests inspect its artists); the others
save it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.report.stats import Group

DPI = 200
NEUTRAL = "#7f7f7f"  # the boxes and a CSV baseline: no group's colour


def _plt() -> Any:  # the pyplot module, imported with a headless backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_colors(labels: Iterable[str]) -> dict[str, Any]:
    """label -> colour, the same in every figure of a report. Assigned in sorted label order
    (not by rank, which a new result can change), from tab10, then tab20's light shades, then
    evenly spaced hues, so that no two groups share one."""
    from matplotlib import colormaps

    names = sorted(set(labels))
    tab10 = list(colormaps["tab10"].colors)
    light = list(colormaps["tab20"].colors)[1::2]
    palette = tab10 + light
    if len(names) > len(palette):
        hsv = colormaps["hsv"]
        palette = [hsv(i / len(names)) for i in range(len(names))]
    return {name: palette[i] for i, name in enumerate(names)}


def pooled_over(groups: list[Group], axis: str) -> list[str]:
    """The other keys whose values differ among the cells (the seed included): what a plot
    of ``axis`` alone pools over."""
    seen: dict[str, set[str]] = {}
    for g in groups:
        for c in g.cells:
            for key, value in c.cell.values.items():
                seen.setdefault(key, set()).add(str(value))
    return [k for k, vs in seen.items() if k != axis and len(vs) > 1]


def save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def dice_by_axis_figures(
    groups: list[Group], colors: dict[str, Any] | None = None
) -> list[tuple[str, Any]]:
    """(axis, Figure) for every axis with at least two values among the groups."""
    plt = _plt()
    colors = colors or group_colors(g.label for g in groups)
    axes = list(dict.fromkeys(k for g in groups for k in g.values))
    out = []
    for axis in axes:
        by_value: dict[str, list[Group]] = {}
        for g in groups:
            if axis in g.values:
                by_value.setdefault(str(g.values[axis]), []).append(g)
        if len(by_value) < 2:
            continue
        labels = list(by_value)
        shown = [g for gs in by_value.values() for g in gs]
        legend = len(shown) > len(labels)  # a group per box says no more than the x labels
        fig, ax = plt.subplots(figsize=(2.2 + 1.2 * len(labels) + (2.6 if legend else 0), 4.0))
        values = [[c.best for g in by_value[v] for c in g.cells] for v in labels]
        ax.boxplot(
            values,
            showfliers=False,
            medianprops={"color": "black"},
            boxprops={"color": NEUTRAL},
            whiskerprops={"color": NEUTRAL},
            capprops={"color": NEUTRAL},
        )
        for i, v in enumerate(labels, start=1):
            j = 0
            for g in by_value[v]:
                ys = [c.best for c in g.cells]
                xs = [i + 0.07 * (((j + k) % 5) - 2) for k in range(len(ys))]  # fixed jitter
                j += len(ys)
                ax.scatter(xs, ys, s=18, alpha=0.85, color=colors[g.label], label=g.label, zorder=3)
        ticks = [f"{v}\nn={len(ys)}" for v, ys in zip(labels, values, strict=True)]
        ax.set_xticks(range(1, len(labels) + 1), ticks)
        ax.set_xlabel(axis)
        ax.set_ylabel("best val Dice (one point per cell)")
        others = pooled_over(groups, axis)
        pooled = f"\npooled over {' × '.join(others)}" if others else ""
        ax.set_title(f"best val Dice by {axis}{pooled}", fontsize=10)
        if legend:
            ax.legend(title="group", fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        out.append((axis, fig))
    return out


def dice_by_axis(
    groups: list[Group], out_dir: Path, colors: dict[str, Any] | None = None
) -> list[Path]:
    """One figure per axis: every cell's best val Dice for each value of that axis."""
    return [
        save(fig, out_dir / f"dice_by_{axis.replace('.', '_')}.png")
        for axis, fig in dice_by_axis_figures(groups, colors)
    ]


def curve_stats(group: Group) -> tuple[list[int], list[float], list[float], list[int]]:
    """Epochs, mean and sample std of val Dice over the group's cells at each, and n."""
    per_epoch: dict[int, list[float]] = {}
    for c in group.cells:
        for epoch, value in c.curve:
            per_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(per_epoch)
    means = [statistics.fmean(per_epoch[e]) for e in epochs]
    stds = [statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds, [len(per_epoch[e]) for e in epochs]


def learning_curves_figure(groups: list[Group], colors: dict[str, Any] | None = None) -> Any:
    """Each group's mean val Dice per epoch over its seeds, with a ± std band."""
    plt = _plt()
    colors = colors or group_colors(g.label for g in groups)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for g in groups:
        epochs, means, stds, _ = curve_stats(g)
        color = colors[g.label]
        ax.plot(epochs, means, marker="o", ms=3, color=color, label=f"{g.label} (n={g.n})")
        ax.fill_between(
            epochs,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color=color,
            alpha=0.18,
            linewidth=0,
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_xlabel("epoch")
    ax.set_ylabel("val Dice")
    ax.set_title("val Dice per epoch: mean ± std over each group's seeds", fontsize=10)
    ax.legend(title="group (n cells)", fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def learning_curves(
    groups: list[Group], out_dir: Path, colors: dict[str, Any] | None = None
) -> Path:
    return save(learning_curves_figure(groups, colors), out_dir / "learning_curves.png")


def per_class_figure(rows: list[dict[str, Any]], colors: dict[str, Any] | None = None) -> Any:
    """Per-class Dice of each group beside the baseline's (bars: mean, whiskers: ± std)."""
    plt = _plt()
    classes = list(dict.fromkeys(r["class"] for r in rows))
    first = rows[0]
    colors = colors or group_colors([*(r["group"] for r in rows), first["baseline"]])
    base_name = f"baseline ({first['baseline']})"
    series: dict[str, dict[str, tuple[float, float]]] = {
        base_name: {r["class"]: (r["baseline_mean"], r["baseline_std"]) for r in rows}
    }
    for r in rows:
        series.setdefault(r["group"], {})[r["class"]] = (r["mean"], r["std"])
    width = 0.8 / len(series)
    width_in = max(5.0, 2.5 + 0.35 * len(classes) * len(series))
    fig, ax = plt.subplots(figsize=(width_in + 2.4, 3.8))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(classes))]
        means = [_num(values.get(c, (None, None))[0]) for c in classes]
        stds = [_num(values.get(c, (None, None))[1], 0.0) for c in classes]
        key = first["baseline"] if name == base_name else name
        color = colors.get(key, NEUTRAL)
        ax.bar(
            xs,
            means,
            width,
            yerr=stds,
            capsize=2,
            label=name,
            color=color,
            hatch="//" if name == base_name else None,
            edgecolor="white" if name == base_name else None,
        )
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    ax.set_xlabel("class")
    source = "test" if first["source"] == "test" else "best val"
    ax.set_ylabel(f"{source} Dice (mean ± std over seeds)")
    ax.set_title(f"per-class {source} Dice vs the baseline", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def per_class_vs_baseline(
    rows: list[dict[str, Any]], out_dir: Path, colors: dict[str, Any] | None = None
) -> Path:
    return save(per_class_figure(rows, colors), out_dir / "per_class_vs_baseline.png")


def _num(value: float | None, default: float = float("nan")) -> float:
    return default if value is None or value != value else float(value)
