"""3D and 2D (``dims=2d``) semantic segmentation with MONAI networks, losses and metrics."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "conf"
CONFIG_NAME = "config"
TRAIN = "recipes.segmentation.train:train"
PREDICT = "recipes.segmentation.predict:predict"
EVALUATE = "recipes.components.testtime.summary:evaluate"
#: Can every file of a data config be read? (problems as messages; runner plan calls it)
CHECK_DATA = "recipes.components.data.readable:check_readable"
#: Train a cell's first steps and predict its cost (``runner profile``).
PROFILE = "recipes.segmentation.profile:profile"
