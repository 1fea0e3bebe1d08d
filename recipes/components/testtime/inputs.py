"""Which files feed the network at test time, checked before any model is loaded.

Inputs are named as nnU-Net names them: ``CASE_XXXX.nii.gz``, one file per channel, ``XXXX``
the channel's index *in the dataset* the model was trained on (``dataset.json``'s
``channel_names``, or ``data.channel_names``). A model trained on a subset
(``data.channels: [tmax]``) reads only its channels' files, so an ``imagesTs`` folder laid out
like ``imagesTr`` works as it is. Every problem (a file that is not named so, a missing
channel file, a channel the dataset does not have, a file holding several channels) is
reported at once, naming the file and the channels that are valid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.components.data.layouts import DatasetInfo, select_channels
from recipes.components.data.readable import read_cases
from recipes.contract import PredictInputError

NNUNET_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.nii)$")
ENDINGS = (".nii.gz", ".nii")
#: Layouts whose volumes are HDF5/TIFF stacks: one file per volume, one channel
#: (recipes/components/testtime/stack_cases.py), not NIfTI-named files.
STACKS = ("h5", "tiff")
MAX_PROBLEMS = 6


@dataclass(frozen=True)
class ChannelMap:
    """The dataset's channels (index = file number) and the ones the network reads."""

    dataset: tuple[str, ...]
    fed: tuple[int, ...]
    classes: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.dataset[i] for i in self.fed)

    def describe(self, indices: tuple[int, ...] | None = None) -> str:
        chosen = self.fed if indices is None else indices
        return ", ".join(f"_{i:04d} ({self.dataset[i]})" for i in chosen)


def _from_config(data_cfg: Mapping[str, Any]) -> DatasetInfo:
    """Names from the config alone, for when the training data is not on this machine."""
    channels = data_cfg.get("channel_names")
    if not channels and data_cfg.get("format") == "isles24":
        from recipes.components.data.layouts import ISLES24_MAPS

        channels = ISLES24_MAPS
    if not channels:
        channels = [f"channel{i}" for i in range(int(data_cfg.get("in_channels") or 1))]
    classes = data_cfg.get("class_names") or [
        "background",
        *(f"class{i}" for i in range(1, int(data_cfg.get("num_classes") or 2))),
    ]
    root = Path(str(data_cfg.get("root") or "."))
    return DatasetInfo(root, "config", tuple(map(str, channels)), tuple(map(str, classes)))


def channel_map(data_cfg: Mapping[str, Any]) -> ChannelMap:
    """The channel files a model of ``data_cfg`` reads, by dataset index, in its order."""
    if data_cfg.get("format") in STACKS:  # one stack per volume: its channels are the config's
        info = _from_config(data_cfg)
        return ChannelMap(
            info.channel_names, tuple(range(len(info.channel_names))), info.class_names
        )
    try:
        _, info = read_cases(data_cfg)
    except (OSError, ValueError, KeyError):
        info = _from_config(data_cfg)  # the training data is elsewhere: the config's names
    wanted = data_cfg.get("channels")
    if isinstance(wanted, str):
        wanted = [wanted]
    try:
        indices, _ = select_channels(info, list(wanted) if wanted is not None else None)
    except ValueError as err:
        raise PredictInputError(str(err)) from None
    fed = tuple(indices) if indices is not None else tuple(range(len(info.channel_names)))
    if len(fed) != int(data_cfg.get("in_channels") or len(fed)):
        raise PredictInputError(
            f"the model takes data.in_channels={data_cfg.get('in_channels')} channels but its "
            f"data config feeds {len(fed)}: {[info.channel_names[i] for i in fed]}"
        )
    return ChannelMap(info.channel_names, fed, info.class_names)


def _raise(where: str, problems: list[str]) -> None:
    if problems:
        more = len(problems) - MAX_PROBLEMS
        shown = "; ".join(problems[:MAX_PROBLEMS]) + (f"; ... ({more} more)" if more > 0 else "")
        raise PredictInputError(f"{where}: {shown}")


def read_input_folder(folder: Path, cmap: ChannelMap) -> list[dict[str, Any]]:
    """The cases of an nnU-Net-named folder, each ``{"case", "image": [files, fed order]}``."""
    if not folder.is_dir():
        raise PredictInputError(f"--input {folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    nifti = [p for p in files if p.name.endswith(ENDINGS)]
    if not nifti:
        seen = ", ".join(p.name for p in files[:3]) or "nothing"
        raise PredictInputError(
            f"{folder}: no NIfTI inputs (found {seen}); expected nnU-Net names "
            f"CASE_XXXX.nii.gz, one file per channel: {cmap.describe()}"
        )
    by_case: dict[str, dict[int, Path]] = {}
    problems = []
    for path in nifti:
        match = NNUNET_NAME.match(path.name)
        if match is None:
            problems.append(
                f"{path.name} is not an nnU-Net input name (CASE_XXXX.nii.gz, XXXX the "
                f"channel: {cmap.describe()})"
            )
            continue
        by_case.setdefault(match["case"], {})[int(match["channel"])] = path
    every = tuple(range(len(cmap.dataset)))
    for case, channels in sorted(by_case.items()):
        extra = sorted(c for c in channels if c >= len(cmap.dataset))
        if extra:
            names = ", ".join(channels[c].name for c in extra)
            problems.append(
                f"case {case} has {len(channels)} channel files ({names} beyond the dataset's); "
                f"the model's dataset has {len(cmap.dataset)} channels: {cmap.describe(every)}"
            )
        for index in (i for i in cmap.fed if i not in channels):
            ending = next(iter(channels.values())).name.removeprefix(f"{case}_")[4:]
            problems.append(
                f"case {case}: {folder / f'{case}_{index:04d}{ending}'} is missing "
                f"(channel {cmap.dataset[index]}); the model reads {cmap.describe()}"
            )
    _raise(f"--input {folder}", problems)
    items = [
        {"case": case, "image": [str(channels[i]) for i in cmap.fed]}
        for case, channels in sorted(by_case.items())
    ]
    check_headers(items, cmap)
    return items


def check_headers(items: list[dict[str, Any]], cmap: ChannelMap) -> None:
    """Each file holds what its name says (headers only, no voxels): one channel per file,
    or all the dataset's channels in a 4D file (MSD), and a case's channels share a grid."""
    import nibabel as nib

    problems = []
    for item in items:
        paths = item["image"] if isinstance(item["image"], list) else [item["image"]]
        grids = {}
        for path in paths:
            try:
                shape = tuple(nib.load(path).shape)
            except (OSError, nib.filebasedimages.ImageFileError) as err:
                problems.append(f"{path}: cannot be read as NIfTI ({err})")
                continue
            channels = math.prod(shape[3:]) if len(shape) > 3 else 1
            want = 1 if isinstance(item["image"], list) else len(cmap.dataset)
            if channels != want:
                problems.append(
                    f"{path} holds {channels} channels (shape {shape}), expected {want}: "
                    + (
                        "one channel per file, CASE_0000, CASE_0001, ..."
                        if want == 1
                        else f"the dataset's {cmap.describe(tuple(range(want)))}"
                    )
                )
            grids[path] = shape[:3]
        if len(set(grids.values())) > 1:
            listed = ", ".join(f"{Path(p).name} {s}" for p, s in grids.items())
            problems.append(f"case {item['case']}: its channel files differ in shape: {listed}")
    _raise("inputs", problems)
