"""Small networks of our own, for architectures MONAI does not ship."""

from recipes.components.models.nets.medsegdiff import MedSegDiff
from recipes.components.models.nets.meshnet import MeshNet
from recipes.components.models.nets.org_medsegdiff import ORGMedSegDiff
from recipes.components.models.nets.rsunet import RSUNet

__all__ = ["MedSegDiff", "MeshNet", "ORGMedSegDiff", "RSUNet"]
