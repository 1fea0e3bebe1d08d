"""Out of memory, told apart: ``oom: gpu: ...`` (a CUDA allocation failed) or ``oom: host:
...`` (the CPU allocator refused, or the kernel's OOM killer, a cgroup limit, killed a process
of the cell), each with its evidence in the ledger reason.

The evidence of a host OOM is the kernel's: the OOM-kill counter of the memory cgroup the cell
runs in (``memory.oom_control`` in cgroup v1, ``memory.events`` in v2) and the machine's
(``oom_kill`` in ``/proc/vmstat``), read when the cell starts (:func:`snapshot`, kept in its
``status.json``) and again when something of it dies; and, where the kernel's log can be read,
its ``Killed process <pid>`` line. A DataLoader worker killed by signal 9 (torch then raises
``DataLoader worker (pid N) is killed by signal: Killed``) counts as an OOM only with such
evidence: a worker killed by hand stays an ``exception``.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

GPU, HOST = "gpu", "host"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: A v1 limit at or above this is "no limit" (the kernel writes 2**63 rounded to a page).
NO_LIMIT = 2**62

_WORKER = re.compile(r"DataLoader worker \(pids?\(?s?\)? ?([\d, ]+)\)")
_TRIED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")
_TOTAL = re.compile(r"GPU (\d+) has a total capacity of ([\d.]+ [KMGT]?i?B) of which ([\d.]+ \S+)")
_CPU_BYTES = re.compile(r"you tried to allocate (\d+) bytes")


def gib(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 1024:.0f} KiB"


# --- the cgroup and the kernel's counters -----------------------------------------------------


def _cgroup_dirs(pid: str = "self") -> tuple[str | None, list[Path]]:
    """The memory cgroup of ``pid`` as /proc names it, and its directories from the cgroup up
    to the hierarchy's root (a container sees its own cgroup mounted as the root)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None, []
    v1 = v2 = None
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if "memory" in controllers.split(","):
            v1 = path
        elif hierarchy == "0" and not controllers:
            v2 = path
    if v1 is not None and (CGROUP_ROOT / "memory").is_dir():
        root, name = CGROUP_ROOT / "memory", v1
    elif v2 is not None and (CGROUP_ROOT / "cgroup.controllers").exists():
        root, name = CGROUP_ROOT, v2
    else:
        return None, []
    here = root / name.lstrip("/")
    node = here if here.is_dir() else root
    chain = [node]
    while node != root and node.parent != node:
        node = node.parent
        chain.append(node)
    return name, chain


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _field(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _limit(directory: Path) -> int | None:
    for name in ("memory.limit_in_bytes", "memory.max"):
        text = (_read(directory / name) or "").strip()
        if text.isdigit() and int(text) < NO_LIMIT:
            return int(text)
    return None


def snapshot(pid: str = "self") -> dict[str, Any]:
    """The memory facts of a process now: its cgroup, the tightest limit on the way up, the
    cgroup's OOM kills so far, its peak usage, and the machine's OOM kills so far."""
    path, chain = _cgroup_dirs(pid)
    out: dict[str, Any] = {"cgroup": path}
    limits = [(lim, d) for d in chain if (lim := _limit(d)) is not None]
    if limits:
        limit, where = min(limits, key=lambda x: x[0])
        out["limit"] = limit
        out["limit_at"] = str(where)
    if chain:
        out.update(_counters(chain[0]), dir=str(chain[0]))
    out["system_oom_kills"] = _field(_read(Path("/proc/vmstat")), "oom_kill")
    return out


def _counters(directory: Path) -> dict[str, int | None]:
    """A cgroup's OOM kills so far and its peak usage (v1 or v2 file names)."""
    control = _read(directory / "memory.oom_control") or _read(directory / "memory.events")
    peak = _read(directory / "memory.max_usage_in_bytes") or _read(directory / "memory.peak")
    peak = (peak or "").strip()
    return {"oom_kills": _field(control, "oom_kill"), "peak": int(peak) if peak.isdigit() else None}


def kernel_kill_lines(pids: list[int]) -> list[str]:
    """The kernel log's ``Killed process <pid>`` lines for these pids (empty where the log
    can't be read: ``kernel.dmesg_restrict`` without CAP_SYSLOG, a container)."""
    if not pids:
        return []
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    wanted = {str(p) for p in pids}
    found = []
    for line in out.stdout.splitlines():
        m = re.search(r"Killed process (\d+) \(([^)]*)\)", line)
        if m and m.group(1) in wanted:
            found.append(line.split("] ", 1)[-1][:200])
    return found


def kill_evidence(
    before: dict[str, Any] | None, pids: list[int], machine_wide: bool = True
) -> str | None:
    """What says the kernel's OOM killer struck since ``before`` (a :func:`snapshot` of the
    cell's start), in words; None when nothing does. ``machine_wide``: the machine's counter
    counts too (for a loader worker seen killed by signal 9; a process that is merely gone
    needs its cgroup's counter or the kernel's line naming it)."""
    now = snapshot(str(pids[0])) if pids and Path(f"/proc/{pids[0]}").exists() else None
    now = now or _snapshot_at(before)
    lines = kernel_kill_lines(pids)
    facts = []
    before = before or {}
    cg_before, cg_now = before.get("oom_kills"), now.get("oom_kills")
    if cg_before is not None and cg_now is not None and cg_now > cg_before:
        facts.append(f"{cg_now - cg_before} OOM kill(s) in memory cgroup {before.get('cgroup')}")
    sys_before, sys_now = before.get("system_oom_kills"), now.get("system_oom_kills")
    machine = machine_wide and sys_before is not None and sys_now is not None
    if not facts and machine and sys_now > sys_before:
        facts.append(f"{sys_now - sys_before} OOM kill(s) on this machine (/proc/vmstat)")
    if not facts and not lines:
        return None
    limit = before.get("limit") or now.get("limit")  # the limit at start: what it ran under
    if limit:
        facts.append(f"limit {gib(limit)}")
    if now.get("peak"):
        facts.append(f"peak {gib(now['peak'])}")
    text = "the kernel's OOM killer: " + ", ".join(facts) if facts else "the kernel's OOM killer"
    return text + (f"; {lines[0]}" if lines else "")


def _snapshot_at(before: dict[str, Any] | None) -> dict[str, Any]:
    """The counters now of the cgroup ``before`` was taken in (its process is gone)."""
    out: dict[str, Any] = {"system_oom_kills": _field(_read(Path("/proc/vmstat")), "oom_kill")}
    directory = Path((before or {}).get("dir") or "/nonexistent")
    out.update(_counters(directory))
    if directory.is_dir():
        out["limit"] = _limit(directory)
    return out


# --- exceptions -----------------------------------------------------------------------------


def _gpu_peak() -> str:
    """PyTorch's peak on the current CUDA device (its counters outlive the failed
    allocation), when CUDA was used in this process."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    with contextlib.suppress(Exception):
        if torch.cuda.is_initialized():
            allocated = torch.cuda.max_memory_allocated()
            reserved = torch.cuda.max_memory_reserved()
            return f"peak {gib(allocated)} allocated, {gib(reserved)} reserved by PyTorch"
    return ""


def _gpu_reason(text: str) -> str:
    parts = []
    if m := _TRIED.search(text):
        parts.append(f"tried to allocate {m.group(1)}")
    if m := _TOTAL.search(text):
        parts.append(f"on GPU {m.group(1)} (total {m.group(2)}, {m.group(3)} free)")
    if peak := _gpu_peak():
        parts.append(peak)
    detail = "; ".join(parts) if parts else text.splitlines()[0][:300] if text else "out of memory"
    return f"oom: {GPU}: {detail}"


def _rss_peak() -> str:
    with contextlib.suppress(Exception):
        import resource

        return f"peak RSS {gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}"
    return ""


def oom_reason(exc: BaseException, before: dict[str, Any] | None = None) -> str | None:
    """The ledger reason of an exception that means out of memory (``oom: gpu: ...`` or
    ``oom: host: ...``, with the evidence), else None. ``before``: the cell's start
    :func:`snapshot`, to tell a loader worker killed by the OOM killer from one killed by
    hand."""
    name, text = type(exc).__name__, str(exc)
    lower = text.lower()
    if "OutOfMemoryError" in name or re.search(r"\b(cuda|hip|xpu|mps)\b.*out of memory", lower):
        return _gpu_reason(text)
    if m := _WORKER.search(text):
        if "signal" not in lower and "exited unexpectedly" not in lower:
            return None
        pids = [int(p) for p in re.findall(r"\d+", m.group(1))]
        evidence = kill_evidence(before, pids)
        if evidence is None:
            return None
        what = "DataLoader worker" + ("s" if len(pids) > 1 else "")
        return f"oom: {HOST}: {what} (pid {', '.join(map(str, pids))}) killed; {evidence}"[:500]
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in lower:
        m = _CPU_BYTES.search(text)
        refused = (
            f"the CPU allocator refused {gib(int(m.group(1)))}"
            if m
            else (text.splitlines()[0][:200] if text else name)
        )
        facts = [refused, _rss_peak()]
        if before and before.get("limit"):
            facts.append(f"memory cgroup limit {gib(before['limit'])}")
        return f"oom: {HOST}: " + "; ".join(f for f in facts if f)
    return None


def oom_kind(reason: str | None) -> str | None:
    """``gpu`` or ``host`` for an ``oom`` reason; an older reason without a kind reads as gpu
    when it names CUDA, else host; None for other reasons."""
    if not reason or not reason.startswith("oom"):
        return None
    kind = reason.split(":", 2)[1].strip() if reason.count(":") >= 2 else ""
    if kind in (GPU, HOST):
        return kind
    return GPU if "cuda" in reason.lower() else HOST
