"""Figures of the search report: the metric against epoch for every trial with the rungs
drawn (a pruned trial's curve ends with an x), and each searched parameter against the
metric (marginal plots)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _plt() -> Any:  # pyplot with a headless backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(data: dict[str, Any], out_dir: Path) -> list[Path]:
    studies = [st for st in data["studies"] if any(r.get("curve") for r in st["trials"])]
    if not studies:
        return []
    plt = _plt()
    fig, axes = plt.subplots(len(studies), 1, figsize=(7.5, 3.6 * len(studies)), squeeze=False)
    for ax, st in zip(axes[:, 0], studies, strict=True):
        for row in st["trials"]:
            if not row.get("curve"):
                continue
            xs, ys = zip(*row["curve"], strict=True)
            pruned = row["state"] == "pruned"
            (line,) = ax.plot(xs, ys, lw=1, alpha=0.55 if pruned else 0.95)
            if pruned:
                ax.plot(xs[-1], ys[-1], "x", color=line.get_color(), ms=6)
        p = st.get("pruning")
        if p:
            for bracket, epochs in p["rungs"].items():
                for e in epochs:
                    ax.axvline(e, color="grey", ls="--" if str(bracket) == "0" else ":", lw=0.8)
            ax.set_title(
                f"{st['study']}: rungs (dashed) at epochs {p['rungs'][next(iter(p['rungs']))]}"
                f"; x: pruned",
                fontsize=9,
            )
        else:
            ax.set_title(st["study"], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(data["metric"])
    fig.tight_layout()
    path = out_dir / "search_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def marginals(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """Each searched parameter against the metric: done trials filled, pruned hollow."""
    metric = data["metric"]
    rows = [r for st in data["studies"] for r in st["trials"] if r.get(metric) is not None]
    params = [k for k in (rows[0] if rows else {}) if k.startswith("param.")]
    if not rows or not params:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.2), squeeze=False)
    for ax, key in zip(axes[0], params, strict=True):
        values = [r[key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [str(v) for v in values]
        for state, face in (("done", None), ("pruned", "none")):
            pts = [(x, r[metric]) for x, r in zip(xs, rows, strict=True) if r["state"] == state]
            if pts:
                px, py = zip(*pts, strict=True)
                ax.scatter(px, py, s=18, facecolors=face, edgecolors="C0", label=state)
        positive = numeric and all(v > 0 for v in values)
        if positive and max(values) / min(values) > 30 and not math.isnan(max(values)):
            ax.set_xscale("log")
        ax.set_xlabel(key[len("param.") :], fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"best {metric}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "search_marginals.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
