"""``runner report --format table``: the report's tables on the terminal (rich)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.cli.trust_view import print_trust
from runner.report.gpu_hours import fmt_hours, summary_line
from runner.report.publish import Report
from runner.report.stats import fmt


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _ci(row: dict[str, Any], prefix: str) -> str:
    low, high = _nan(row.get(f"{prefix}ci_low")), _nan(row.get(f"{prefix}ci_high"))
    note = f" ({row[f'{prefix}ci_note']})" if row.get(f"{prefix}ci_note") else ""
    return ("-" if math.isnan(low) else f"[{low:.4f}, {high:.4f}]") + note


def _p(value: float | None) -> str:
    v = _nan(value)
    return "-" if math.isnan(v) else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")


def print_report(console: Console, report: Report, title: str, baseline: str | None) -> None:
    has_test = any(r.get("test_dice_mean") is not None for r in report.groups)
    selected = next((r for r in report.groups if r.get("select_metric")), None)
    ranked = (
        f"ranked by {selected['select_metric']} ({selected['select_mode']}), Dice at its best epoch"
        if selected
        else "ranked by validation"
    )
    table = Table(
        title=f"{title}: best val Dice over seeds ({report.cells_done} of "
        f"{report.cells_total} cells done); {ranked}"
        + ("; test reported beside it, never ranked on" if has_test else ""),
        title_justify="left",
    )
    cols = ["group", "n"]
    if selected:
        cols.append(f"{selected['select_metric']} mean ± std")
    cols += ["val Dice mean ± std", "val 95% CI"]
    if has_test:
        cols += ["test Dice mean ± std", "test 95% CI"]
    # One class: its column would repeat the overall Dice.
    classes = report.classes if len(report.classes) > 1 else []
    cols += [*classes, *(["Δ val vs baseline"] if baseline else [])]
    hours = "gpu_hours" in (report.groups[0] if report.groups else {})
    cols += ["GPU-h"] if hours else []
    for col in cols:
        table.add_column(col)
    for r in report.groups:
        marked = report.remedied_mode == "mark" and r.get("remedied")
        cells = [r["group"], f"{r['n']} ({r['remedied']} remedied)" if marked else str(r["n"])]
        if selected:
            cells.append(fmt(_nan(r.get("select_mean")), _nan(r.get("select_std"))))
        cells.append(fmt(_nan(r["dice_mean"]), _nan(r["dice_std"])))
        cells.append(_ci(r, "dice_"))
        if has_test:
            mean, std = _nan(r.get("test_dice_mean")), _nan(r.get("test_dice_std"))
            cells += [fmt(mean, std) + (f" (n={r['test_n']})" if r.get("test_n") else "")]
            cells.append(_ci(r, "test_dice_"))
        cells += [fmt(_nan(r[f"dice_{c}_mean"]), _nan(r[f"dice_{c}_std"])) for c in classes]
        if baseline:
            cells.append(f"{_nan(r.get('delta_mean')):+.4f}")
        if hours:
            cells.append(fmt_hours(r["gpu_hours"]))
        table.add_row(*cells)
    if report.gpu_hours:
        table.caption = summary_line(report.gpu_hours) + " (all cells, every attempt)"
        table.caption_justify = "left"
    console.print(table)
    if report.gpu_hours.get("warning"):
        console.print(f"warning: {report.gpu_hours['warning']}", markup=False)
    _print_remedied(console, report)
    if baseline and any("vs_baseline_p" in r for r in report.groups):
        _print_paired(console, report, baseline)
    if report.per_class:
        _print_per_class(console, report)
    if report.effects:  # one group, or no axis with two values: nothing to show
        _print_effects(console, report)
    print_trust(console, report)


def _print_remedied(console: Console, report: Report) -> None:
    """Which done cells trained with out-of-memory remedies, and what the table did with them."""
    if not report.remedied:
        return
    listed = ", ".join(f"{cid} ({'+'.join(steps)})" for cid, steps in report.remedied.items())
    done = {
        "mark": "counted in their groups (--remedied exclude leaves them out, --remedied "
        "separate compares them as groups of their own)",
        "exclude": "left out of every table (--remedied exclude)",
        "separate": "compared as groups of their own, named with their remedies; not in the "
        "axis effects (--remedied separate)",
    }[report.remedied_mode]
    console.print(
        f"{len(report.remedied)} done cell(s) trained with out-of-memory remedies: {listed}; "
        f"{done}",
        markup=False,
    )


def _print_effects(console: Console, report: Report) -> None:
    effects = Table(
        title="marginal effect of each axis value (vs the mean of all groups)",
        title_justify="left",
    )
    for col in ("axis", "value", "mean Dice", "effect", "groups"):
        effects.add_column(col)
    for e in report.effects:
        effects.add_row(
            e["axis"], e["value"], f"{e['mean']:.4f}", f"{e['effect']:+.4f}", str(e["groups"])
        )
    console.print(effects)


def _print_paired(console: Console, report: Report, baseline: str) -> None:
    table = Table(
        title=f"test Dice against {baseline}, paired over the test cases: mean difference, "
        "bootstrap 95% CI, Wilcoxon signed-rank p, Holm-adjusted across groups",
        title_justify="left",
    )
    for col in ("group", "cases", "Δ test Dice", "95% CI", "p", "p (Holm)", "holds"):
        table.add_column(col)
    for r in report.groups:
        if "vs_baseline_p" not in r:
            continue
        table.add_row(
            r["group"],
            str(r["vs_baseline_n_cases"]),
            f"{_nan(r['vs_baseline_delta']):+.4f}",
            _ci(r, "vs_baseline_"),
            _p(r["vs_baseline_p"]),
            _p(r["vs_baseline_p_holm"]),
            "yes" if r["vs_baseline_holds"] else "no",
        )
    console.print(table)


def _print_per_class(console: Console, report: Report) -> None:
    rows = report.per_class
    source = "test" if rows[0]["source"] == "test" else "best val"
    csv = rows[0]["baseline"] == "csv"
    welch = any(r.get("test") == "welch" for r in rows)
    table = Table(
        title=f"per-class {source} Dice against the baseline ({report.baseline})"
        + (f"; {CSV_TEST}" if welch else "")
        + ("; a CSV holds no cases: difference of means, no test" if csv and not welch else ""),
        title_justify="left",
    )
    cols = ["group", "class", "mean ± std (n)", "baseline mean ± std" + (" (n)" if csv else "")]
    cols += ["Δ", "Δ %"]
    paired = any("p_holm" in r for r in rows)
    cols += (["p (Welch)"] if welch else []) + (["p (Holm)", "holds"] if paired else [])
    for col in cols:
        table.add_column(col)
    for r in rows:
        theirs = fmt(_nan(r["baseline_mean"]), _nan(r["baseline_std"]))
        cells = [
            r["group"],
            r["class"],
            f"{fmt(_nan(r['mean']), _nan(r['std']))} ({r['n']})",
            theirs + (f" ({r['baseline_n'] or '?'})" if csv else ""),
            f"{_nan(r['delta']):+.4f}",
            f"{_nan(r['delta_pct']):+.1f}%",
        ]
        cells += [_p(r.get("p"))] if welch else []
        if paired:
            tested = "p_holm" in r
            cells += [_p(r.get("p_holm")), ("yes" if r.get("holds") else "no") if tested else "-"]
        table.add_row(*cells)
    untested = sorted({r["no_test"] for r in rows if r.get("no_test")})
    if csv and untested:
        table.caption = "no test where " + "; ".join(untested) + NO_N_HINT
        table.caption_justify = "left"
    console.print(table)


def print_held_out(console: Console, data: dict[str, Any] | None) -> None:
    """A cv matrix's held-out scores (runner.report.nested): per configuration, mean ± std
    over outer folds, the selection score beside them; then each outer fold's choice."""
    if not data:
        return
    rows, folds = data["configurations"], data["folds"]
    if not folds:
        console.print(
            f"nested CV, {data['outer']} outer x {data['inner']} inner folds: none of the "
            f"{data['among']} is done yet, so no outer fold has a selected cell",
            markup=False,
        )
        return
    table = Table(
        title=f"nested CV, {data['outer']} outer x {data['inner']} inner folds: held-out test "
        f"Dice of each outer fold's best of its {data['among']} (selected by "
        f"{data['selected_by']}), mean ± std over outer folds; the inner validation Dice "
        "it was selected on beside it",
        title_justify="left",
    )
    cols = ["configuration", "outer folds", "inner val Dice (selection)", "held-out test Dice"]
    for col in [*cols, "optimism (val - test)"]:
        table.add_column(col)
    for r in rows:
        tested = f"{r['outer_folds_tested']} of {r['outer_folds']}"
        test = fmt(_nan(r["test_dice_mean"]), _nan(r["test_dice_std"]))
        optimism = r["optimism_mean"]
        table.add_row(
            r["configuration"],
            tested,
            fmt(_nan(r["inner_val_dice_mean"]), _nan(r["inner_val_dice_std"])),
            test,
            "-" if optimism is None else f"{optimism:+.4f}",
        )
    console.print(table)
    per_fold = Table(title="each outer fold's selected cell", title_justify="left")
    for col in ("configuration", "outer fold", "selected cell", "inner val Dice", "test Dice"):
        per_fold.add_column(col)
    for f in folds:
        per_fold.add_row(
            f["configuration"],
            str(f["outer_fold"]),
            f["run_name"],
            fmt(_nan(f["inner_val_dice"]), math.nan),
            fmt(_nan(f.get("test_dice")), math.nan),
        )
    console.print(per_fold)
    if data["untested"]:
        console.print(
            f"{len(data['untested'])} selected cell(s) not scored on their held-out fold yet: "
            "run `runner evaluate MATRIX --best`",
            markup=False,
        )


CSV_TEST = (
    "Welch's t-test from summary statistics (scipy.stats.ttest_ind_from_stats, equal_var="
    "False): the group's runs vs the CSV's mean, std and n, two-sided, Holm across groups "
    "per class"
)
NO_N_HINT = " (a CSV's n: an n column, --baseline-n or the matrix's report.baseline_n)"
