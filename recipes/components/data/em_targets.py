"""Targets of the ``em_instance`` task, derived on the fly from instance labels.

Three maps per voxel, one per network head (PyTorch Connectomics' "BCD" targets):

0. binary: inside any instance;
1. boundary: on an instance's border, found section by section (in-plane, as EM
   annotations are drawn and as z is several times coarser): scikit-image's
   ``find_boundaries``, ``mode`` inner / outer / thick; plus both sides of any face where
   two instances touch across sections;
2. distance: inside each instance, the Euclidean distance to its border in physical units
   (``scipy.ndimage.distance_transform_edt`` with the voxel size), divided by the
   instance's own maximum, so that every instance peaks at 1 whatever its size; 0 outside.

The seeded watershed (``training/instances.py``) inverts them: seeds where binary is high,
boundary low and distance high, grown over the foreground.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries, relabel_sequential

BOUNDARY_MODES = ("inner", "outer", "thick")


def spacing_of(img: Any) -> tuple[float, float, float]:
    """Voxel size (x, y, z) of a MetaTensor (any unit: only ratios matter), else 1s."""
    pixdim = getattr(img, "pixdim", None)
    if pixdim is None:
        return (1.0, 1.0, 1.0)
    values = torch.as_tensor(pixdim, dtype=torch.float64).flatten()[:3].tolist()
    values += [1.0] * (3 - len(values))  # a 2D patch: one section thick
    return (values[0], values[1], values[2]) if min(values) > 0 else (1.0, 1.0, 1.0)


def boundaries_in_plane(instances: np.ndarray, mode: str = "inner") -> np.ndarray:
    """Instance borders of an (X, Y, Z) label volume, section by section, plus the faces
    where two instances touch across sections (stacked vesicles would merge otherwise)."""
    if mode not in BOUNDARY_MODES:
        raise ValueError(f"task.boundary_mode must be one of {BOUNDARY_MODES}, got {mode!r}")
    out = np.zeros(instances.shape, dtype=bool)
    for z in range(instances.shape[-1]):
        section = instances[..., z]
        if section.any():
            out[..., z] = find_boundaries(section, connectivity=1, mode=mode, background=0)
    below, above = instances[..., :-1], instances[..., 1:]
    contact = (below != above) & (below > 0) & (above > 0)
    out[..., :-1] |= contact
    out[..., 1:] |= contact
    return out


def normalized_distance(instances: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Per-instance distance to the border, scaled to a maximum of 1 in each instance."""
    out = np.zeros(instances.shape, dtype=np.float32)
    relabelled, _, _ = relabel_sequential(instances.astype(np.int64, copy=False))
    for index, box in enumerate(ndimage.find_objects(relabelled), start=1):
        if box is None:
            continue
        # One voxel of margin, so the crop's edge is outside the instance.
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        inside = relabelled[padded] == index
        distance = ndimage.distance_transform_edt(inside, sampling=spacing)
        peak = float(distance.max())
        if peak > 0:
            out[padded][inside] = (distance[inside] / peak).astype(np.float32)
    return out


def instance_targets(
    instances: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), mode: str = "inner"
) -> np.ndarray:
    """(3, X, Y, Z) float32: binary, boundary, normalised distance (see the module doc)."""
    instances = np.asarray(instances)
    return np.stack(
        [
            (instances > 0).astype(np.float32),
            boundaries_in_plane(instances, mode).astype(np.float32),
            normalized_distance(instances, spacing),
        ]
    )


class EMTargetsd(MapTransform):
    """``target_key`` = :func:`instance_targets` of ``label_key`` (1, X, Y, Z) instance ids.

    ``instance_labels: false``: the label is a binary mask, whose connected components
    (26-connected) are taken as the instances.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        target_key: str = "target",
        boundary_mode: str = "inner",
        instance_labels: bool = True,
    ) -> None:
        super().__init__(keys)
        self.target_key, self.boundary_mode = target_key, boundary_mode
        self.instance_labels = instance_labels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            ids = np.asarray(convert_to_tensor(label, track_meta=False).cpu())[0]
            ids = np.rint(ids).astype(np.int64)
            flat = ids.ndim == 2  # a 2D patch (dims=2d): one section
            if flat:
                ids = ids[..., None]
            if not self.instance_labels:
                ids = connected_components(ids > 0, connectivity=3)
            target = instance_targets(ids, spacing_of(label), self.boundary_mode)
            if flat:
                target = target[..., 0]
            d[self.target_key] = convert_to_tensor(target, track_meta=False)
        return d
