"""Diffusion segmentation (MedSegDiff-style) on 2D slices: denoise a mask given the image."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "conf"
CONFIG_NAME = "config"
TRAIN = "recipes.diffusion.train:train"
#: Label maps from N DDIM samples per slice window, fused, on each input's grid.
PREDICT = "recipes.diffusion.predict:predict"
#: The same scoring as the segmentation recipe's (nnU-Net's summary.json).
EVALUATE = "recipes.components.testtime.summary:evaluate"
#: Can every file of a data config be read? (problems as messages; runner plan calls it)
CHECK_DATA = "recipes.components.data.readable:check_readable"
