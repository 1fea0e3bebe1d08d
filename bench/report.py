"""Write ``results.json`` (every figure, raw) and ``results.md`` (the table, printed too)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import Outcome, Row, describe_device

HEADER = ("benchmark", "measured", "baseline", "ratio", "target", "met?")


def _met(row: Row) -> str:
    return "—" if row.met is None else ("yes" if row.met else "**no**")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(meta: dict[str, Any], outcomes: dict[str, Outcome], errors: dict[str, str]) -> str:
    git = meta["git"]
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git["dirty"] else "")
    lines = [
        f"# Benchmarks ({meta['mode']})",
        "",
        f"- date: {meta['started']}; took {meta['duration_s']:.0f} s; commit {commit}",
        f"- device: {describe_device(meta['device'])}",
        f"- load average (1, 5, 15 min) at start {meta['load_start']}, end {meta['load_end']}"
        " (above the core count: other processes were competing for the CPU; interleaving"
        " spreads that over both sides of a ratio, but it adds noise)",
        f"- command: `{meta['command']}`",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * 3 + ["---", ":---:"]) + "|",
    ]
    rows = [r for o in outcomes.values() for r in o.rows]
    for r in rows:
        cells = [r.benchmark, r.measured, r.baseline, r.ratio, r.target, _met(r)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- *{r.benchmark}*: {r.note}" for r in rows if r.note]
    for name, err in errors.items():
        lines.append(f"- **{name} failed**: {err}")
    for o in outcomes.values():
        if o.markdown:
            lines += ["", o.markdown]
    return "\n".join(lines) + "\n"


def write(
    out: Path, meta: dict[str, Any], outcomes: dict[str, Outcome], errors: dict[str, str]
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        **meta,
        "benchmarks": {
            name: {"rows": [asdict(r) for r in o.rows], "details": o.details}
            for name, o in outcomes.items()
        },
        "errors": errors,
    }
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    text = markdown(meta, outcomes, errors)
    (out / "results.md").write_text(text)
    return text
