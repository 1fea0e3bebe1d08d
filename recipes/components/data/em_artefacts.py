"""Serial-section EM artefacts as MONAI randomizable dictionary transforms.

Serial-section EM volumes are stacks of separately cut, imaged and aligned sections, and
their typical defects are per section: a section misaligned against its neighbours (alone,
or with every section below a cut), a missing section (blank, or a neighbour imaged twice),
and motion blur along one direction over a few sections. Training on them makes a network
robust to what real stacks contain (PyTorch Connectomics' MisAlignment, MissingParts and
MotionBlur augmentations).

Tensors are channel-first ``(C, X, Y, Z)`` with the section axis z last, as the recipe loads
every volume. Each transform draws all its parameters from ``self.R``, so the recipe's
per-(seed, epoch, case) seeding (``data/seeding.py``) reproduces them exactly on resume, and
keeps the last draw in attributes (``z``, ``shift``, ``sections``...) for inspection.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor


def _plain(x: torch.Tensor) -> torch.Tensor:
    """The storage of a (Meta)Tensor as a plain tensor, for in-place section edits."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class _SectionTransform(RandomizableTransform, MapTransform):
    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def _depth(self, d: Mapping[Hashable, Any]) -> int:
        return int(next(iter(d[k] for k in self.key_iterator(d))).shape[-1])

    def draw(self, depth: int) -> None:
        raise NotImplementedError

    def apply(self, key: Hashable, img: torch.Tensor) -> None:
        """Edit ``img`` (a private copy) in place."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        depth = self._depth(d)
        self.draw(depth)  # always drawn, so the random stream does not depend on the coin
        if not self._do_transform or depth < 2:
            return d
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=True).clone()
            self.apply(key, _plain(img))
            d[key] = img
        return d


def shift_section(section: torch.Tensor, dx: int, dy: int, fill: str) -> torch.Tensor:
    """``section`` (C, X, Y) with its content moved by (dx, dy) voxels; the uncovered strip
    repeats the edge (``fill="replicate"``) or is zero (``"constant"``)."""
    x, y = section.shape[-2:]
    pad = (max(dy, 0), max(-dy, 0), max(dx, 0), max(-dx, 0))  # F.pad: last axis first
    padded = F.pad(section[None].float(), pad, mode=fill)[0]
    x0, y0 = max(-dx, 0), max(-dy, 0)
    return padded[:, x0 : x0 + x, y0 : y0 + y].to(section.dtype)


class RandMisalignmentd(_SectionTransform):
    """Shift one section in-plane (a "slip", share ``slip_ratio``) or every section from a
    cut ``z`` to the end (a translation: sections ``z..`` realigned as one block).

    Apply it to image, label and mask alike: the misalignment is in the stack the annotator
    saw. The strip a shift uncovers repeats the edge; in ``mask_keys`` it is zero, so a mask
    marks it as not to be counted.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        max_shift: int = 8,
        slip_ratio: float = 0.5,
        mask_keys: Sequence[Hashable] = ("mask",),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if int(max_shift) < 1:
            raise ValueError(f"misalignment max_shift must be >= 1 voxel, got {max_shift}")
        self.max_shift, self.slip_ratio = int(max_shift), float(slip_ratio)
        self.mask_keys = set(mask_keys)
        self.z, self.shift, self.slip, self.depth = 0, (0, 0), True, 0

    def draw(self, depth: int) -> None:
        self.depth = depth
        self.z = int(self.R.randint(1, max(2, depth)))
        shift = [0, 0]
        while shift == [0, 0]:
            shift = [int(v) for v in self.R.randint(-self.max_shift, self.max_shift + 1, size=2)]
        self.shift = (shift[0], shift[1])
        self.slip = bool(self.R.rand() < self.slip_ratio)

    @property
    def sections(self) -> list[int]:
        """The sections the last draw moves."""
        return [self.z] if self.slip else list(range(self.z, self.depth))

    def apply(self, key: Hashable, img: torch.Tensor) -> None:
        fill = "constant" if key in self.mask_keys else "replicate"
        for z in self.sections:
            img[..., z] = shift_section(img[..., z], *self.shift, fill)


class RandMissingSectiond(_SectionTransform):
    """Replace 1..``max_sections`` sections by a blank (``fill_value``; None: the patch's
    minimum, i.e. black) or by a copy of the previous section (``mode``: blank | repeat |
    both, chosen per section). Image only: the structures are still there, unseen."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.1,
        max_sections: int = 1,
        mode: str = "both",
        fill_value: float | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if mode not in ("blank", "repeat", "both"):
            raise ValueError(f"missing-section mode must be blank, repeat or both, got {mode!r}")
        self.max_sections, self.mode, self.fill_value = max(1, int(max_sections)), mode, fill_value
        self.sections: list[int] = []
        self.repeated: list[bool] = []

    def draw(self, depth: int) -> None:
        count = int(self.R.randint(1, self.max_sections + 1))
        self.sections = sorted(int(z) for z in self.R.choice(depth, min(count, depth), False))
        coins = self.R.rand(len(self.sections)) < 0.5
        self.repeated = [self.mode == "repeat" or (self.mode == "both" and bool(c)) for c in coins]

    def apply(self, key: Hashable, img: torch.Tensor) -> None:
        original = img.clone()
        fill = float(original.min()) if self.fill_value is None else float(self.fill_value)
        for z, repeat in zip(self.sections, self.repeated, strict=True):
            if repeat:
                img[..., z] = original[..., z - 1 if z > 0 else z + 1]
            else:
                img[..., z] = fill


def line_kernel(length: int, angle: float) -> torch.Tensor:
    """A normalised ``length`` x ``length`` kernel: a line through the centre at ``angle``
    (radians, from the x axis towards y)."""
    kernel = torch.zeros(length, length)
    centre = (length - 1) / 2
    for t in np.linspace(-centre, centre, 4 * length):
        kernel[round(centre + t * math.cos(angle)), round(centre + t * math.sin(angle))] = 1.0
    return kernel / kernel.sum()


class RandMotionBlurd(_SectionTransform):
    """Blur ``1..max_sections`` consecutive sections along one in-plane direction (a line
    kernel of odd length in ``kernel_size``, at a uniformly drawn angle). Image only."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.1,
        max_sections: int = 2,
        kernel_size: Sequence[int] = (5, 11),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        low, high = (int(k) for k in kernel_size)
        if not 3 <= low <= high:
            raise ValueError(
                f"motion-blur kernel_size must be [low, high] with 3 <= low <= high: {kernel_size}"
            )
        self.max_sections, self.kernel_size = max(1, int(max_sections)), (low, high)
        self.sections: list[int] = []
        self.length, self.angle = low, 0.0

    def draw(self, depth: int) -> None:
        count = min(int(self.R.randint(1, self.max_sections + 1)), depth)
        start = int(self.R.randint(0, depth - count + 1))
        self.sections = list(range(start, start + count))
        self.length = int(self.R.randint(self.kernel_size[0], self.kernel_size[1] + 1)) | 1  # odd
        self.angle = float(self.R.uniform(0.0, math.pi))

    def apply(self, key: Hashable, img: torch.Tensor) -> None:
        kernel = line_kernel(self.length, self.angle).to(img.device)
        half = self.length // 2
        for z in self.sections:
            section = img[..., z].float()[:, None]  # (C, 1, X, Y): channels as a batch
            padded = F.pad(section, (half, half, half, half), mode="replicate")
            img[..., z] = F.conv2d(padded, kernel[None, None])[:, 0].to(img.dtype)
