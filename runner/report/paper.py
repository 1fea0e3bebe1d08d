"""``runner report --format md|latex``: the ranking as a table to paste into a paper.

One row per group, best first (ranked by validation, the selection metric): n, best val
Dice mean ± std and its 95 % t interval over seeds, and, once ``runner evaluate`` ran, test
Dice the same way; with ``--baseline``, the paired test difference and its Holm-adjusted p.
A footnote carries the trust notes (``trust.py``). Markdown is a pipe table; LaTeX a
``booktabs`` tabular (``\\usepackage{booktabs}``), text escaped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}"}  # fmt: skip


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def rows(report: Any) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ranking: plain text, ``±`` between mean and std."""
    groups = report.groups
    test = any(r.get("test_dice_mean") is not None for r in groups)
    paired = any("vs_baseline_delta" in r for r in groups)
    head = ["Rank", "Group", "n", "Val Dice", "Val 95% CI"]
    head += ["Test Dice", "Test 95% CI"] if test else []
    head += [f"ΔTest vs {report.baseline}", "p (Holm)"] if paired else []
    body = []
    for rank, r in enumerate(groups, start=1):
        row = [str(rank), str(r["group"]), str(r["n"]), _pm(r, "dice_"), _ci(r, "dice_")]
        if test:
            row += [_pm(r, "test_dice_"), _ci(r, "test_dice_")]
        if paired:
            row += [_f(r.get("vs_baseline_delta")), _f(r.get("vs_baseline_p_holm"))]
        body.append(row)
    return head, body


def _pm(r: dict[str, Any], prefix: str) -> str:
    mean, std = r.get(f"{prefix}mean"), r.get(f"{prefix}std")
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return _f(mean)
    return f"{_f(mean)} ± {_f(std)}"


def _ci(r: dict[str, Any], prefix: str) -> str:
    low, high = r.get(f"{prefix}ci_low"), r.get(f"{prefix}ci_high")
    text = "–" if low is None or math.isnan(low) else f"[{_f(low)}, {_f(high)}]"
    return text + ("*" if r.get(f"{prefix}ci_note") else "")


def _footnotes(report: Any) -> list[str]:
    notes = []
    if any(r.get("dice_ci_note") or r.get("test_dice_ci_note") for r in report.groups):
        notes.append("* fewer than 3 seeds: the interval is clipped to [0, 1] and too wide")
    return notes + list((report.trust or {}).get("notes", []))


def markdown(report: Any) -> str:
    head, body = rows(report)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    lines += ["", *(f"- {n}" for n in _footnotes(report))]
    return "\n".join(lines).rstrip() + "\n"


def _tex(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("–", "--")


def latex(report: Any) -> str:
    head, body = rows(report)
    cols = "rl" + "r" * (len(head) - 2)
    lines = [r"\begin{tabular}{" + cols + "}", r"\toprule"]
    lines.append(" & ".join(_tex(h) for h in head) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {n}" for n in _footnotes(report)]
    return "\n".join(lines) + "\n"


def write(report: Any, out_dir: Path) -> list[Path]:
    """``ranking.md`` and ``ranking.tex``."""
    md, tex = out_dir / "ranking.md", out_dir / "ranking.tex"
    md.write_text(markdown(report), encoding="utf-8")
    tex.write_text(latex(report), encoding="utf-8")
    return [md, tex]
