"""A converted sweep (:class:`Draft`) as a commented matrix file, in the matrix's usual order:
header, name, recipe, base, axes, search, pruner, executor, then the key mapping.

Text is written here (not dumped) so that every entry can carry the source's own spelling
and the notes of its conversion; unmapped keys stay in place as commented-out entries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from runner.importers.model import yaml_value

_PLAIN_OVERRIDE = re.compile(r"^[A-Za-z0-9_.+=/-]+$")


@dataclass
class Entry:
    """One line of a block: ``key: value`` (or ``- value`` in base), comments above it."""

    key: str
    value: str
    above: list[str] = field(default_factory=list)
    trailing: str = ""
    commented: bool = False  # an unmapped key, kept visible


@dataclass
class Draft:
    name: str
    recipe: str
    header: list[str] = field(default_factory=list)
    base: list[Entry] = field(default_factory=list)
    axes: list[Entry] = field(default_factory=list)
    search: list[Entry] = field(default_factory=list)  # method, trials, seed, metric, mode
    space: list[Entry] = field(default_factory=list)
    pruner: dict[str, Any] | None = None
    pruner_notes: list[str] = field(default_factory=list)
    mapping: list[str] = field(default_factory=list)
    #: source key -> recipe key, and a config group's renamed choices (source -> recipe)
    targets: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, dict[str, str]] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    #: the notes marked "!" (also on stderr)
    warnings: list[str] = field(default_factory=list)


def override_text(text: str) -> str:
    return text if _PLAIN_OVERRIDE.match(text) else json.dumps(text)


def _comment(lines: list[str], indent: str) -> list[str]:
    out = []
    for line in lines:
        for part in line.splitlines() or [""]:
            out.append(f"{indent}# {part}".rstrip())
    return out


def _block(entries: list[Entry], indent: str, listed: bool = False) -> list[str]:
    out: list[str] = []
    for e in entries:
        out += _comment(e.above, indent)
        body = f"- {e.value}" if listed else f"{e.key}: {e.value}"
        tail = f"  # {e.trailing}" if e.trailing else ""
        out.append(f"{indent}{'# ' if e.commented else ''}{body}{tail}")
    return out


def render(d: Draft) -> str:
    lines = _comment(d.header, "")
    lines += [f"name: {d.name}", f"recipe: {d.recipe}"]
    if d.base:
        lines.append("base:")
        lines += _block(d.base, "  ", listed=True)
    if d.axes:
        lines.append("axes:")
        lines += _block(d.axes, "  ")
    if d.space and d.search:
        lines.append("search:")
        lines += _block(d.search, "  ")
        lines.append("  space:")
        lines += _block(d.space, "    ")
    elif d.space:  # every searched key unmapped: shown, not written
        lines.append("# search:")
        lines.append("#   space:")
        lines += _block(d.space, "#     ")
    if d.pruner is not None:
        lines += _comment(d.pruner_notes, "")
        inner = ", ".join(f"{k}: {yaml_value(v)}" for k, v in d.pruner.items())
        lines.append(f"pruner: {{{inner}}}")
    lines.append("executor: {kind: local, slots: 1}  # or slurm / docker: see the README")
    lines.append("")
    lines += _comment(
        ["mapping (source key -> recipe key: why):", *(f"  {m}" for m in d.mapping)], ""
    )
    if d.unmapped:
        lines += _comment(
            [
                "NOT MAPPED (commented out above; map them with --map SOURCE=KEY and import "
                "again, or edit the entries):",
                *(f"  {u}" for u in d.unmapped),
            ],
            "",
        )
    return "\n".join(lines) + "\n"
