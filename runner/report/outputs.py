"""What a report leaves behind: files in its folder, and one MLflow run per distinct report.

- **Files**: a report folder holds a manifest of the files the last report wrote
  (``.report-files.json``). The next report writes its own, then removes the ones of the
  previous manifest it did not write again (a per-class CSV from an earlier
  ``--baseline-csv``, the plot of an axis that is gone), and nothing else: files a user put
  there stay.
- **MLflow**: every report run carries the digest of its ``report.json``
  (``runner.report_digest``); a report whose content equals an earlier run's is not logged
  again (``runner report`` says which run holds it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from runner import tracking
from runner.plan import Plan

MANIFEST = ".report-files.json"
DIGEST_TAG = "runner.report_digest"


def keep_only(out_dir: Path, files: list[Path]) -> list[Path]:
    """Record ``files`` as the folder's report files; remove the previous report's files
    that are not among them. Returns the removed paths."""
    manifest = out_dir / MANIFEST
    try:
        before = json.loads(manifest.read_text())
    except (OSError, ValueError):
        before = []
    now = {p.resolve().relative_to(out_dir.resolve()).as_posix() for p in files}
    removed = []
    for name in before:
        path = out_dir / name
        if name not in now and ".." not in Path(name).parts and path.is_file():
            path.unlink()
            removed.append(path)
    tmp = manifest.with_name(f"{MANIFEST}.{os.getpid()}")
    tmp.write_text(json.dumps(sorted(now), indent=1))
    os.replace(tmp, manifest)
    return removed


def digest(report_json: Path) -> str:
    """The content digest of a report (its ``report.json``, keys sorted)."""
    data = json.loads(report_json.read_text())
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def earlier_run(plan: Plan, experiment: str, content: str) -> str | None:
    """The id of a finished report run of ``experiment`` with this content digest."""
    client = tracking.client(plan.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{DIGEST_TAG}` = '{content}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
