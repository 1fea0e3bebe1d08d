"""``runner report --html``: the whole report as one self-contained ``report.html``.

One file a person reads and mails: no script, no stylesheet or font to fetch, every figure
inlined as a base64 PNG, so it opens offline; sections off screen are laid out only when
scrolled to, so 10,000 cells open about as fast as 10 (README). In order: what was compared
and how the metrics are defined; how far to trust it (the notes of ``trust.py``); the
ranking with its intervals; the paired comparison against the baseline; the seeds each
comparison needs; the tuning budget of each arm; per class; per test case; the figures;
groups with no result and why; the code the cells ran; every cell.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from runner.report.stats import Group

#: Groups shown as columns of the per-case table (the baseline first, then by rank).
CASE_GROUPS = 12

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.trust{background:#fff7e0;border:1px solid #e8c36a;padding:8px 14px}
.flag{background:#fde2e2}.note{color:#8a5300}.muted{color:#777}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
section{content-visibility:auto;contain-intrinsic-size:auto 900px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _pm(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return _num(mean)
    return f"{_num(mean)} ± {_num(std)}"


def _ci(row: dict[str, Any], prefix: str) -> str:
    low, high = row.get(f"{prefix}ci_low"), row.get(f"{prefix}ci_high")
    if low is None or (isinstance(low, float) and math.isnan(low)):
        text = "–"
    else:
        text = f"[{_num(low)}, {_num(high)}]"
    note = row.get(f"{prefix}ci_note")
    return text + (f' <span class="note">({_e(note)})</span>' if note else "")


def table(head: Sequence[str], rows: Iterable[Sequence[str]], flags: Iterable[bool] = ()) -> str:
    """An HTML table; ``rows`` hold ready HTML (escape text with :func:`_e` first)."""
    marks = list(flags)
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = ' class="flag"' if i < len(marks) and marks[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _ranking(report: Any) -> str:
    rows = report.groups
    test = any(r.get("test_dice_mean") is not None for r in rows)
    head = ["#", "group", "n", "val Dice mean ± std", "val 95 % CI (t)"]
    head += ["test Dice mean ± std", "test 95 % CI (t)"] if test else []
    delta = bool(rows) and "delta_mean" in rows[0]
    head += ["Δ val vs baseline"] if delta else []
    head += ["GPU-h"]
    body = []
    for rank, r in enumerate(rows, start=1):
        cells = [str(rank), _e(r["group"]), str(r["n"]), _pm(r["dice_mean"], r["dice_std"])]
        cells.append(_ci(r, "dice_"))
        if test:
            cells += [_pm(r.get("test_dice_mean"), r.get("test_dice_std")), _ci(r, "test_dice_")]
        if delta:
            cells.append(_num(r.get("delta_mean")))
        cells.append(_num(r.get("gpu_hours"), 2))
        body.append(cells)
    return table(head, body)


def _paired(report: Any) -> str:
    rows = [r for r in report.groups if "vs_baseline_p" in r]
    if not rows:
        return ""
    head = ["group", "cases", "Δ test Dice", "bootstrap 95 % CI", "Wilcoxon p", "p (Holm)"]
    body = [
        [_e(r["group"]), str(r["vs_baseline_n_cases"]), _num(r["vs_baseline_delta"]),
         _ci(r, "vs_baseline_"), _num(r["vs_baseline_p"], 3), _num(r["vs_baseline_p_holm"], 3)]
        for r in rows
    ]  # fmt: skip
    holds = [bool(r.get("vs_baseline_holds")) for r in rows]
    text = table(
        [*head, "holds"], [[*b, "yes" if h else "no"] for b, h in zip(body, holds, strict=True)]
    )
    return f"<h2>Against the baseline ({_e(report.baseline)}), paired over test cases</h2>{text}"


def _seeds(trust: dict[str, Any]) -> str:
    rows = trust.get("seeds") or []
    if not rows:
        return ""
    delta = trust.get("delta")
    head = ["group", "n", "Δ seen (val)", "std over seeds", "seeds for Δ seen"]
    head += [f"seeds for Δ = {delta:g}"] if delta else []
    body = []
    for r in rows:
        cells = [_e(r["group"]), str(r["n"]), _num(r["difference_seen"]), _num(r["sd_over_seeds"])]
        cells.append(_seeds_text(r["seeds_for_seen"]))
        if delta:
            cells.append(_seeds_text(r["seeds_for_delta"]))
        body.append(cells)
    return (
        f"<h2>Seeds needed (against {_e(trust.get('reference'))}, 80 % power, α = 0.05)</h2>"
        + table(head, body)
    )


def _seeds_text(n: int | None) -> str:
    return "> 1000" if n is None else str(n)


def _budgets(trust: dict[str, Any]) -> str:
    arms = trust.get("budgets") or []
    if not arms:
        return ""
    flagged = {f["arm"] for f in trust.get("unfair", [])}
    kind = arms[0]["hours_kind"]
    head = ["arm", "cells run", "epochs", kind, "pruned"]
    body = [
        [_e(a["arm"]), str(a["trials"]), str(a["epochs"]), _num(a["hours"], 3),
         f"{100 * a['pruned_fraction']:.0f} %"]
        for a in arms
    ]  # fmt: skip
    factor = trust.get("budget_factor")
    return (
        f"<h2>Tuning budget per arm (flagged: trials or epochs more than {factor:g}× the "
        "reference's)</h2>" + table(head, body, [a["arm"] in flagged for a in arms])
    )


#: The per-class rows' ``test`` (runner.report.baseline): paired against a group, or Welch's
#: from a CSV's summary statistics.
TEST_NAMES = {"wilcoxon": "Wilcoxon signed-rank", "welch": "Welch (CSV mean, std, n)"}


def _per_class(report: Any) -> str:
    if not report.classes:
        return ""
    head = ["group", *report.classes]
    body = [
        [_e(r["group"]), *(_pm(r.get(f"dice_{c}_mean"), r.get(f"dice_{c}_std"))
                           for c in report.classes)]
        for r in report.groups
    ]  # fmt: skip
    out = "<h2>Per class (best val Dice over seeds)</h2>" + table(head, body)
    if report.per_class:
        rows = report.per_class
        head = ["group", "class", "mean ± std (n)", "baseline", "Δ", "p (Holm)", "test"]
        out += table(
            head,
            [
                [_e(r["group"]), _e(r["class"]), f"{_pm(r['mean'], r['std'])} ({r['n']})",
                 _pm(r["baseline_mean"], r["baseline_std"]), _num(r["delta"]),
                 _num(r.get("p_holm"), 3), _e(TEST_NAMES.get(r.get("test"), "none"))]
                for r in rows
            ],
        )  # fmt: skip
    return out


def _per_case(groups: list[Group], report: Any) -> str:
    """A column per group: the baseline and the best :data:`CASE_GROUPS` (a page of 2,000
    columns reads as nothing)."""
    ranked = [r["group"] for r in report.groups]
    shown = list(dict.fromkeys([*([report.baseline] if report.baseline else []), *ranked]))
    by_label = {g.label: g for g in groups}
    shown = [label for label in shown if label in by_label][:CASE_GROUPS]
    values = {label: by_label[label].case_values() for label in shown}
    cases = sorted({c for v in values.values() for c in v})
    if not cases:
        return ""
    body = [[_e(c), *(_num(values[g].get(c)) for g in shown)] for c in cases]
    more = f", the first {len(shown)} of {len(groups)} groups" if len(shown) < len(groups) else ""
    return f"<h2>Per test case (Dice, mean over each group's seeds{more})</h2>" + table(
        ["case", *shown], body
    )


def _figures(files: Iterable[Path]) -> str:
    out = []
    for path in files:
        if path.suffix == ".png" and path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            name = _e(path.name)
            out.append(
                f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                f'<figcaption class="muted">{name}</figcaption></figure>'
            )
    return "<h2>Figures</h2>" + "".join(out) if out else ""


def _missing(report: Any) -> str:
    if not report.missing:
        return ""
    body = [[_e(m["group"]), str(m["cells"]), _e(m["summary"]), _e("; ".join(m["why"]))]
            for m in report.missing]  # fmt: skip
    return "<h2>Groups with no result</h2>" + table(["group", "cells", "states", "why"], body)


def _code(report: Any, names: dict[str, str]) -> str:
    body = [[_e(digest), str(len(ids)), _e(", ".join(names.get(i, i) for i in ids[:20]))
             + (" …" if len(ids) > 20 else "")]
            for digest, ids in report.code_versions.items()]  # fmt: skip
    return "<h2>Code the cells ran</h2>" + table(["code digest", "cells", "cells (first 20)"], body)


def _cells(groups: list[Group]) -> str:
    body = []
    for g in groups:
        for c in g.cells:
            body.append(
                [_e(c.cell.run_name), _e(g.label), _num(c.best), str(c.best_epoch),
                 _num(c.test.get("test_dice")), _e(c.run_id)]
            )  # fmt: skip
    head = ["cell", "group", "best val Dice", "best epoch", "test Dice", "MLflow run"]
    return f"<h2>Every cell ({len(body)} done)</h2>" + table(head, body)


def render(report: Any, groups: list[Group], matrix: str) -> str:
    """The page (module doc)."""
    trust = report.trust or {}
    notes = trust.get("notes") or ["no caveat found for these comparisons"]
    names = {c.cell.id: c.cell.run_name for g in groups for c in g.cells}
    rules = "; ".join(f"{r} ({len(ids)} cells)" for r, ids in report.metric_rules.items())
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(matrix)}: report</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(matrix)}: report</h1>",
        f"<p>{report.cells_done} of {report.cells_total} cells done; generated "
        f"{_e(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}. Ranked by best validation "
        "Dice (the selection metric); test figures are reported beside it, never ranked on."
        f'</p><p class="muted">Metric rules: {_e(rules or "unrecorded")}</p>',
        '<h2>How far to trust this</h2><div class="trust"><ul>',
        *(f"<li>{_e(n)}</li>" for n in notes),
        "</ul></div>",
    ]
    # Sections off screen are laid out only when scrolled to (content-visibility), so a page
    # of 10,000 cells shows its top as fast as a small one.
    sections = [
        "<h2>Ranking</h2>" + _ranking(report),
        _paired(report),
        _seeds(trust),
        _budgets(trust),
        _per_class(report),
        _per_case(groups, report),
        _figures(report.files),
        _missing(report),
        _code(report, names),
        _cells(groups),
    ]
    parts += [f"<section>{s}</section>" for s in sections if s]
    return "".join([*parts, "</body></html>\n"])


def write(report: Any, groups: list[Group], out_dir: Path, matrix: str) -> Path:
    path = out_dir / "report.html"
    path.write_text(render(report, groups, matrix), encoding="utf-8")
    return path
