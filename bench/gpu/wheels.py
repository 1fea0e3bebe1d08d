"""``python -m bench.gpu.wheels download|install``: the packages the GPU check imports that a
lent machine's image lacks, carried there as wheels.

The lent machine has no package registry, and its image holds Python 3.12 with torch (CUDA),
numpy, scipy, h5py, tifffile, scikit-image, pyarrow and nvidia-ml-py, but none of the
project's other dependencies; only 64 MiB of the working tree travels to it.

- ``download`` (here, ``make gpu-wheels``): ``pip download`` of exactly :data:`WHEELS`, at the
  versions this environment has installed (the ones the test suite ran against), as CPython
  3.12 manylinux x86-64 wheels without dependencies, into ``.whl/`` (git-ignored); prints
  each size and the total, and fails above :data:`LIMIT_MIB`.
- ``install`` (there, ``make gpu-check``): when torch imports and the project's packages do
  not, ``pip install --no-index --no-deps --target .gpu-site .whl/*.whl`` (or, without pip,
  the wheels unpacked, which is what pip does for these pure or self-contained wheels).

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".whl"
SITE = REPO / ".gpu-site"
LIMIT_MIB = 60.0  # of the 64 MiB that travel; the tracked tree takes ~2 MiB
PYTHON = "3.12"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")

# Exactly what the check imports beyond the image: the distributions whose modules were loaded
# from the wheels when the whole check ran (``--tiny``) in a copy of the image's package set
# with these wheels unpacked beside it. Each group says who needs it.
WHEELS: tuple[str, ...] = (
    # every part: the recipe's networks, losses, transforms and configs
    "monai",  # needs torch and numpy only
    "einops",  # MONAI's diffusion U-Net blocks (MedSegDiff, part 3)
    "omegaconf",
    "antlr4-python3-runtime",  # omegaconf's interpolation grammar
    "PyYAML",  # omegaconf; the optimizer builder
    "hydra-core",  # composes the config groups as a cell does (pure Python, ~160 KB)
    "nibabel",  # NIfTI volumes; the data package imports it (part 5)
    # part 7: `import mlflow`, its file store and its system-metrics monitor
    "mlflow-skinny",
    "mlflow-tracing",
    "psutil",  # the monitor's CPU, memory and disk series (GPU: nvidia-ml-py, on the image)
    "fastapi",  # imported by mlflow.gateway at `import mlflow`
    "starlette",
    "anyio",
    "annotated-doc",
    "lazy-importer",
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "typing-inspection",
    "typing_extensions",  # pydantic needs a newer one than torch's floor guarantees
    "protobuf",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-proto",
    "opentelemetry-semantic-conventions",
    "importlib_metadata",
    "zipp",
    "cachetools",
    "click",
    "cloudpickle",
    "sqlparse",
    "databricks-sdk",
    "google-auth",
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset-normalizer",
)

# Published as a source distribution only (pure Python): built into a py3-none-any wheel here.
SOURCE_ONLY = frozenset({"antlr4-python3-runtime"})

# Importable on the image iff the check can run without the wheels.
NEEDED_MODULES = ("monai", "omegaconf", "hydra", "nibabel")


def requirements() -> list[str]:
    """``name==version`` for each wheel, at this environment's installed version."""
    out = []
    for name in WHEELS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here: run `make install` first") from None
    return out


def download(dest: Path = WHEELHOUSE, python: str = PYTHON) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()  # exactly this list, nothing left from an older one
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--no-deps",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "-d",
        str(dest),
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    binary = [r for r in requirements() if r.split("==")[0] not in SOURCE_ONLY]
    source = [r for r in requirements() if r.split("==")[0] in SOURCE_ONLY]
    subprocess.run([*cmd, *binary], check=True)
    if source:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(dest),
                *source,
            ],
            check=True,
        )
    wheels = sorted(dest.glob("*.whl"))
    total = 0
    for wheel in wheels:
        size = wheel.stat().st_size
        total += size
        print(f"{size / 2**20:8.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:8.2f} MiB  total, {len(wheels)} wheels in {dest}")
    if total > LIMIT_MIB * 2**20:
        print(f"over the {LIMIT_MIB:g} MiB that may travel with the tree", file=sys.stderr)
        return 1
    return 0


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def install(src: Path = WHEELHOUSE, target: Path = SITE) -> int:
    """Install the wheelhouse into ``target`` unless the project's packages are importable
    already (a dev machine, an installed project); idempotent for the same wheels."""
    if not _has("torch"):
        print("torch is not importable: install the project (`make install`)", file=sys.stderr)
        return 1
    if all(_has(m) for m in NEEDED_MODULES):
        print("the check's packages are installed here: nothing to do")
        return 0
    wheels = sorted(src.glob("*.whl"))
    if not wheels:
        print(
            f"no wheels in {src}: run `make gpu-wheels` where a registry is reachable, and "
            "bring .whl/ along with the tree",
            file=sys.stderr,
        )
        return 1
    stamp = target / ".wheels"
    names = "\n".join(w.name for w in wheels) + "\n"
    if stamp.is_file() and stamp.read_text() == names:
        print(f"{len(wheels)} wheels already in {target}")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    if _has("pip"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                "--upgrade",
                "--target",
                str(target),
                *map(str, wheels),
            ],
            check=True,
        )
    else:  # what pip does with a wheel whose files all go to purelib/platlib
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(target)
    stamp.write_text(names)
    print(f"installed {len(wheels)} wheels into {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.wheels", description=__doc__)
    parser.add_argument("action", choices=("download", "install", "list"))
    parser.add_argument("--dir", type=Path, default=WHEELHOUSE, help="the wheelhouse")
    parser.add_argument("--target", type=Path, default=SITE, help="install: where to")
    parser.add_argument("--python", default=PYTHON, help="download: the target's Python")
    args = parser.parse_args(argv)
    if args.action == "list":
        print("\n".join(requirements()))
        return 0
    if args.action == "download":
        return download(args.dir, args.python)
    return install(args.dir, args.target)


if __name__ == "__main__":
    sys.exit(main())
