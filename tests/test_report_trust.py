"""How far ``runner report`` says its comparisons can be trusted (runner/report/trust.py,
intervals.py), what it leaves behind (outputs.py), and the ranking for a paper (paper.py)
and a person (html.py, read back in headless Chromium). Fast: made-up groups, no training;
the end-to-end checks are in test_report.py."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy import stats

from runner.report import html, paper, trust
from runner.report.intervals import seed_interval
from runner.report.outputs import MANIFEST, keep_only
from runner.report.publish import Report
from runner.report.stats import group_rows, marginal_effects
from tests.test_report import _groups

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_seed_interval_is_t_clipped_to_the_metric_and_says_when_n_is_below_3() -> None:
    two = seed_interval([0.80, 0.92])
    # the raw t interval of two seeds runs past 1 (12.7 standard errors each side)
    raw = stats.t.interval(0.95, 1, loc=0.86, scale=stats.sem([0.80, 0.92]))
    assert raw[1] > 1 and two["ci_high"] == 1.0 and two["ci_low"] == pytest.approx(max(0, raw[0]))
    assert two["ci_note"] == "n=2 < 3: too few to compare"
    three = seed_interval([0.80, 0.84, 0.86])
    low, high = stats.t.interval(0.95, 2, loc=0.8333333333, scale=stats.sem([0.80, 0.84, 0.86]))
    assert (three["ci_low"], three["ci_high"]) == pytest.approx((low, high))
    assert three["ci_note"] is None
    assert seed_interval([0.5])["ci_note"] == "n=1 < 3: too few to compare"
    assert math.isnan(seed_interval([0.5])["ci_low"])  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_wilcoxon_floor_is_scipys_smallest_p(n: int) -> None:
    every_case_better = [0.01 * (k + 1) for k in range(n)]  # distinct, all positive
    assert trust.wilcoxon_floor(n) == pytest.approx(stats.wilcoxon(every_case_better).pvalue)


def test_small_n_notes() -> None:
    rows = [{"group": "a", "n": 2, "vs_baseline_n_cases": 5}, {"group": "b", "n": 3}]
    notes = trust.small_n_notes(rows)
    assert any("p < 0.0625" in n and "5 paired test cases" in n for n in notes)
    assert any("bootstrap (BCa)" in n and "5 paired" in n for n in notes)
    assert any("n = 2 over seeds" in n for n in notes)
    many = trust.small_n_notes([{"group": "a", "n": 5, "vs_baseline_n_cases": 40}])
    assert many == []  # 40 cases, 5 seeds: nothing to warn about
    assert trust.bca_coverage(5) == trust.BCA_COVERAGE[5] < 0.9  # simulated, too narrow
    assert trust.bca_coverage(7) == trust.BCA_COVERAGE[6]
    assert trust.bca_coverage(2) is None and trust.bca_coverage(100) == trust.BCA_COVERAGE[30]


@pytest.mark.parametrize(("effect", "n"), [(1.0, 17), (0.8, 26), (0.5, 64)])
def test_seeds_needed_matches_the_power_tables(effect: float, n: int) -> None:
    """Two-sided two-sample t-test, α = 0.05, 80 % power: Cohen's (G*Power's, statsmodels'
    TTestIndPower) 16.7, 25.5, 63.8 per group, rounded up."""
    assert trust.seeds_needed(0.1, 0.1 * effect) == n
    assert trust.seeds_needed(1.0, 0.0) is None and trust.seeds_needed(1.0, 1e-4) is None
    # independent check: the power at n is >= 80 %, at n - 1 below (noncentral t)
    for k, above in ((n, True), (n - 1, False)):
        df, shift = 2 * k - 2, effect / math.sqrt(2 / k)
        crit = stats.t.ppf(0.975, df)
        power = stats.nct.sf(crit, df, shift) + stats.nct.cdf(-crit, df, shift)
        assert bool(power >= 0.8) is above


def test_seed_rows_use_the_pooled_spread_of_the_two_groups() -> None:
    groups = _groups()
    ref = groups[0]
    rows = trust.seed_rows(groups, ref, delta=0.05)
    assert [r["group"] for r in rows] == [g.label for g in groups[1:]]
    g, r = groups[1], rows[0]
    sd = math.sqrt((ref.stats()[1] ** 2 + g.stats()[1] ** 2) / 2)
    assert r["sd_over_seeds"] == pytest.approx(sd)
    assert r["difference_seen"] == pytest.approx(ref.stats()[0] - g.stats()[0])
    assert r["seeds_for_delta"] == trust.seeds_needed(sd, 0.05)


def test_unequal_budgets_are_flagged_beyond_the_factor() -> None:
    arm = {"trials": 10, "epochs": 100, "hours": 2.0}
    arms = {
        "ref": arm,
        "same": {**arm, "hours": 2.9},  # 1.45x: within 1.5x
        "more_epochs": {**arm, "epochs": 160},  # 1.6x
        "untuned": {"trials": 1, "epochs": 10, "hours": 0.0},
    }
    flagged = {f["arm"]: f["ratios"] for f in trust.unfair(arms, "ref", list(arms), 1.5)}
    assert set(flagged) == {"more_epochs", "untuned"}
    assert flagged["more_epochs"] == {"epochs": pytest.approx(1.6)}
    assert flagged["untuned"] == {"trials": 10, "epochs": 10}  # hours: shown, not flagged
    assert trust.unfair({**arms, "slow": {**arm, "hours": 9.0}}, "ref", ["slow"], 1.5) == []
    assert trust.unfair(arms, "ref", list(arms), 12) == []


def test_rules_notes() -> None:
    assert trust.rules_notes({"nnU-Net's": ["a", "b"]}) == []
    notes = trust.rules_notes({"nnU-Net's": ["a"], trust.NO_RULES: ["b", "c"]})
    assert "2 cells recorded no metric_rules" in notes[0] and "2 ways" in notes[1]


def test_a_report_folder_keeps_only_its_own_files(tmp_path: Path) -> None:
    old = [tmp_path / n for n in ("report.json", "per_class_vs_csv.csv", "dice_by_loss.png")]
    for p in old:
        p.write_text("x")
    keep_only(tmp_path, old)
    (tmp_path / "notes.txt").write_text("mine")  # a user's file: never the report's
    (tmp_path / "report.json").write_text("new")
    removed = keep_only(tmp_path, [tmp_path / "report.json"])
    assert sorted(p.name for p in removed) == ["dice_by_loss.png", "per_class_vs_csv.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "notes.txt", "report.json"]
    (tmp_path / MANIFEST).write_text('["../outside.txt"]')  # a tampered manifest
    (tmp_path.parent / "outside.txt").write_text("keep")
    keep_only(tmp_path, [tmp_path / "report.json"])
    assert (tmp_path.parent / "outside.txt").read_text() == "keep"


def _report(baseline: bool = True) -> tuple[Report, list]:
    groups = _groups(2)
    names = ["c0", "c1"]
    for i, g in enumerate(groups):  # test Dice on three cases, per cell
        for c in g.cells:
            c.test = {"test_dice": c.best - 0.05}
            c.test_cases = {f"case_{k}": {"dice": c.best - 0.01 * k - 0.01 * i}
                            for k in range(3)}  # fmt: skip
    base = groups[0].label if baseline else None
    report = Report(group_rows(groups, names, base), marginal_effects(groups), names, 18, 18)
    report.baseline = base
    report.metric_rules = {"nnU-Net's": [c.cell.id for g in groups for c in g.cells]}
    report.code_versions = {"abc123": [c.cell.id for g in groups for c in g.cells]}
    reference = groups[0]
    arms = {g.label: {"arm": g.label, "trials": 3, "epochs": 12, "hours": 0.1,
                      "hours_kind": "wall-hours (no GPU)", "pruned_fraction": 0.0}
            for g in groups}  # fmt: skip
    arms[groups[1].label]["epochs"] = 40
    flagged = trust.unfair(arms, reference.label, list(arms), 1.5)
    report.trust = {
        "notes": [*trust.small_n_notes(report.groups), "unequal tuning budgets: x"],
        "reference": reference.label,
        "seeds": trust.seed_rows(groups, reference, 0.05),
        "delta": 0.05,
        "budget_factor": 1.5,
        "budgets": list(arms.values()),
        "unfair": flagged,
    }
    report.missing = [{"group": "attunet_dice", "cells": 3, "summary": "3 failed",
                       "why": ["attunet_dice_s0: failed: oom"]}]  # fmt: skip
    return report, groups


def test_ranking_for_a_paper_in_markdown_and_latex() -> None:
    report, groups = _report()
    md = paper.markdown(report)
    head = md.splitlines()[0]
    assert head.startswith("| Rank | Group | n | Val Dice | Val 95% CI | Test Dice")
    assert f"ΔTest vs {report.baseline}" in head and "p (Holm)" in head
    first = md.splitlines()[2].split(" | ")
    best = report.groups[0]
    assert first[1] == best["group"] and f"{best['dice_mean']:.3f} ± " in first[3]
    assert len(md.splitlines()) >= 2 + len(groups)
    assert "- 3 paired test cases: the Wilcoxon" in md  # the trust notes as footnotes
    tex = paper.latex(report)
    assert tex.startswith("\\begin{tabular}{rl") and "\\toprule" in tex and "\\bottomrule" in tex
    assert "basicunet\\_dicece" in tex and "$\\pm$" in tex and "$\\Delta$Test" in tex
    assert "_dicece" not in tex.replace("\\_dicece", "")  # every underscore escaped
    assert tex.count("\\\\") == 1 + len(groups)  # header + one row per group


def test_html_report_is_self_contained_and_holds_every_section(tmp_path: Path) -> None:
    from PIL import Image

    report, groups = _report()
    png = tmp_path / "dice_by_model.png"
    Image.new("RGB", (40, 20), (200, 30, 30)).save(png)
    report.files = [png]
    page = html.write(report, groups, tmp_path, "fig<1>").read_text()
    # self-contained: nothing fetched (no src/href to another file or host), figures inlined
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert 'src="data:image/png;base64,' in page and "href=" not in page
    assert "<title>fig&lt;1&gt;: report</title>" in page  # text is escaped
    sections = ["How far to trust this", "Ranking", "Against the baseline", "Seeds needed",
                "Tuning budget per arm", "Per class", "Per test case", "Figures",
                "Groups with no result", "Code the cells ran", "Every cell (18 done)"]  # fmt: skip
    for section in sections:
        assert f"<h2>{section}" in page, section
    assert '<tr class="flag"><td>' + groups[1].label in page  # the unequal budget, marked
    assert "attunet_dice_s0: failed: oom" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test-deps)")
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    report, groups = _report()
    path = html.write(report, groups, tmp_path, "fig")
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"]  # fmt: skip
    url = path.as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert "How far to trust this" in dom.stdout, dom.stderr[-2000:]
    assert groups[0].label in dom.stdout and "seeds for Δ = 0.05" in dom.stdout
    shot = tmp_path / "shot.png"
    done = subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 1000)
        rgb = im.convert("RGB")
        colors = rgb.getcolors(maxcolors=1400 * 1000)
        # the trust box's yellow (#fff7e0) is on screen, beside text (many colours)
        assert (255, 247, 224) in {c for _, c in colors}
    assert colors is not None and len(colors) > 20


def test_terminal_report_prints_the_trust_tables_and_the_missing_groups() -> None:
    import io

    from rich.console import Console

    from runner.cli.report_view import print_report

    report, groups = _report()
    console = Console(file=io.StringIO(), width=250)
    print_report(console, report, "fig", report.baseline)
    text = console.file.getvalue()
    assert "seeds needed per group" in text and "seeds for Δ = 0.05" in text
    assert "tuning budget per arm" in text and "unequal" in text
    assert "group attunet_dice: no result: 3 cells, 3 failed" in text
    assert "trust: 3 paired test cases" in text
    assert marginal_effects(groups[:1]) == []  # one group: no axis with two values
    one = SimpleNamespace(**{**vars(report), "effects": [], "trust": {}, "missing": []})
    console = Console(file=io.StringIO(), width=250)
    print_report(console, one, "fig", None)  # type: ignore[arg-type]
    assert "marginal effect" not in console.file.getvalue()
