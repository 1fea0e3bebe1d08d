"""Benchmark: a training patch read lazily from a chunked volume (the recipe's zarr and
TIFF-folder reader, ``recipes/components/data/chunked.py``) against reading the whole
volume and cropping it (what ``LoadImaged`` does for every item when volumes aren't cached:
the per-worker memory the ink-detection group measured).

A uint16 volume (z, y, x) is written once as a zarr store (chunks 32 x 128 x 128) and as a
folder of uncompressed TIFF slices. Each method runs in a fresh process (so that its peak
resident memory is its own) and reads the same seeded random patches of the group's size,
72 x 136 x 136: time per patch and the process's peak RSS above its start. The volume is
768 x 768 x 256 (302 MB; --quick: 192 x 192 x 64, 4.7 MB, patch 24 x 48 x 48).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, RESULTS, Options, Outcome, Row, fmt_s

FULL = {"shape": (256, 768, 768), "patch": (72, 136, 136), "patches": 12}
QUICK = {"shape": (64, 192, 192), "patch": (24, 48, 48), "patches": 6}
CHUNKS = (32, 128, 128)
METHODS = ("zarr_lazy", "zarr_whole", "tiff_lazy", "tiff_whole")


def _volume(quick: bool) -> Path:
    """The volume as zarr and TIFF slices under bench/results/cache (written once)."""
    import tifffile
    import zarr

    size = QUICK if quick else FULL
    shape = size["shape"]
    root = RESULTS / "cache" / f"lazy_read_{'x'.join(map(str, shape))}"
    if (root / "done").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chunks = tuple(min(c, s) for c, s in zip(CHUNKS, shape, strict=True))
    store = zarr.open_array(str(root / "volume.zarr"), mode="w", shape=shape, chunks=chunks,
                            dtype="u2")  # fmt: skip
    (root / "slices").mkdir(exist_ok=True)
    for z in range(shape[0]):
        plane = rng.integers(0, 65535, size=shape[1:], dtype=np.uint16)
        store[z] = plane
        tifffile.imwrite(root / "slices" / f"{z:04d}.tif", plane)
    (root / "done").write_text("ok")
    return root


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(root: str, method: str, patch: list[int], patches: int) -> dict[str, Any]:
    """In a fresh process: read ``patches`` random patches with ``method``; the resident
    memory is sampled while each read's arrays are alive."""
    from recipes.components.data.chunked import open_volume

    start_rss = peak_rss = _rss_mb()
    fmt, how = method.split("_")
    vol = open_volume(Path(root) / ("volume.zarr" if fmt == "zarr" else "slices"))
    rng = np.random.default_rng(1)
    pz, py, px = patch
    times = []
    for _ in range(patches):
        z, y, x = (
            int(rng.integers(0, s - p + 1)) for s, p in zip(vol.shape_zyx, patch, strict=True)
        )
        t = time.perf_counter()
        if how == "lazy":
            out = vol.read((x, y, z), (px, py, pz))
            peak_rss = max(peak_rss, _rss_mb())
        else:  # the whole volume, then the crop: LoadImaged + a crop transform
            whole = vol.read_all()
            peak_rss = max(peak_rss, _rss_mb())
            out = np.ascontiguousarray(whole[z : z + pz, y : y + py, x : x + px])
            del whole
        times.append(time.perf_counter() - t)
        assert out.size == px * py * pz
        del out
    return {"per_patch_s": float(np.median(times)), "rss_above_start_mb": peak_rss - start_rss,
            "peak_rss_mb": peak_rss, "volume_mb": vol.nbytes / 2**20}  # fmt: skip


def _child(root: Path, method: str, patch: tuple[int, ...], patches: int) -> dict[str, Any]:
    code = (
        "import json, sys; from bench.lazy_read import measure; "
        f"print(json.dumps(measure({str(root)!r}, {method!r}, {list(patch)!r}, {patches})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=900, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(opts: Options) -> Outcome:
    size = QUICK if opts.quick else FULL
    root = _volume(opts.quick)
    got = {m: _child(root, m, size["patch"], size["patches"]) for m in METHODS}
    rows = []
    for fmt in ("zarr", "tiff"):
        lazy, whole = got[f"{fmt}_lazy"], got[f"{fmt}_whole"]
        speed = whole["per_patch_s"] / lazy["per_patch_s"]
        memory = whole["rss_above_start_mb"] / max(lazy["rss_above_start_mb"], 0.1)
        note = (
            f"volume {'x'.join(map(str, size['shape']))} uint16 ({lazy['volume_mb']:.0f} MB), "
            f"patch {'x'.join(map(str, size['patch']))} (z, y, x), {size['patches']} random "
            f"patches, a fresh process each; peak RSS above start: lazy "
            f"{lazy['rss_above_start_mb']:.0f} MB, whole {whole['rss_above_start_mb']:.0f} MB "
            f"({memory:.1f}x)"
        )
        rows.append(
            Row(
                f"Lazy {fmt} patch vs whole-volume read",
                f"{fmt_s(lazy['per_patch_s'])}/patch",
                f"{fmt_s(whole['per_patch_s'])}/patch",
                f"{speed:.2f}× (whole / lazy)",
                "— (info)",
                None,
                note,
                {"lazy": lazy, "whole": whole, "speedup": speed, "memory_ratio": memory},
            )
        )
    return Outcome(rows, {"methods": got, "size": size})
