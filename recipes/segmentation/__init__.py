"""3D and 2D (``dims=2d``) semantic segmentation with MONAI networks, losses and metrics."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "conf"
CONFIG_NAME = "config"
TRAIN = "recipes.segmentation.train:train"
