"""The "GPU figures" Markdown, rendered from a ``gpu-check.json`` (pure Python: it runs
anywhere, e.g. ``python -m bench.gpu --render gpu-check.json`` to refresh the README)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NOT_MEASURED = "GPU figures: not measured yet (`make gpu-check` on a GPU machine writes them)."

HEADER = ("#", "figure", "measured", "baseline", "ratio", "target", "met?")


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _met(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def _device_line(env: Mapping[str, Any]) -> str:
    if not env.get("cuda"):
        return f"CPU {env.get('cpu')}, no CUDA device; torch {env.get('torch')}"
    return (
        f"{env.get('gpu')} ({env.get('gpu_memory_gib')} GiB, driver {env.get('driver')}); "
        f"torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}, "
        f"NCCL {env.get('nccl')}"
    )


def _status(part: Mapping[str, Any]) -> str:
    took = f"{part.get('elapsed_s', 0):.0f} of {part.get('budget_s', 0):.0f} s"
    text = f"**{part['status']}** ({took})"
    if part.get("reason"):
        text += f": {part['reason']}"
    return text


def render_markdown(doc: Mapping[str, Any] | None) -> str:
    """The section's body: where and when it was measured, one table row per figure (a
    skipped part is a row with its reason), then each part's status and the notes."""
    if not doc or not doc.get("parts"):
        return NOT_MEASURED + "\n"
    env = doc.get("environment", {})
    git = env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (
        " (uncommitted changes)" if git.get("dirty") else ""
    )
    mode = doc.get("mode", "full")
    lines = [
        f"Measured by `{doc.get('command', 'python -m bench.gpu')}` ({mode} mode) on "
        f"{_device_line(env)}; {doc.get('started', '?')}, {doc.get('duration_s', 0):.0f} s of a "
        f"{doc.get('budget_s', 0):.0f} s budget; commit {commit}."
        + ("" if doc.get("complete") else " **Incomplete: the run was cut short.**"),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---:", "---", "---:", "---:", "---:", "---", ":---:"]) + "|",
    ]
    notes: list[str] = []
    for part in doc["parts"].values():
        n = part["number"]
        if not part.get("rows"):
            cells = [n, part["title"], part["status"], "—", "—", "—", "—"]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
            notes.append(f"{n}. {part['title']}: {_status(part)}")
            continue
        for row in part["rows"]:
            cells = [
                n,
                row["benchmark"],
                row["measured"],
                row["baseline"],
                row["ratio"],
                row["target"],
                _met(row["met"]),
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        notes.append(f"{n}. {part['title']}: {_status(part)}")
        notes += [
            f"   - *{row['benchmark']}*: {row['note']}" for row in part["rows"] if row["note"]
        ]
    lines += ["", "Parts (status, time used of the part's budget, reasons):", ""]
    lines += notes
    return "\n".join(lines) + "\n"
