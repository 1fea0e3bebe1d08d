"""What the SLURM benchmarks share: whether a cluster answers here, the row that says it
does not, and the cleanup of the jobs a benchmark submitted."""

from __future__ import annotations

import shutil
import subprocess

from bench.common import Row

#: scancel ids per call: a 1,000-cell benchmark's arrays and single jobs stay well under
#: the command line's length limit this way.
CANCEL_CHUNK = 500


def cluster_answers() -> bool:
    """True when ``sinfo`` runs here and lists a partition state."""
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def no_cluster_row(benchmark: str) -> Row:
    """The row of a SLURM benchmark that measured nothing: no cluster answers."""
    return Row(
        benchmark,
        "skipped",
        "—",
        "—",
        "—",
        None,
        "no SLURM cluster answers here: run `make slurm-up` first",
    )


def cancel_all(ids: list[str]) -> None:
    """Cancel these jobs, each array whole (``123_4`` cancels array 123), in chunks; best
    effort: a benchmark's cleanup must not hide its figures."""
    bases = sorted({i.split("_")[0] for i in ids})
    for start in range(0, len(bases), CANCEL_CHUNK):
        subprocess.run(["scancel", *bases[start : start + CANCEL_CHUNK]], check=False, timeout=60)
