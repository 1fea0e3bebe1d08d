"""Diffusion segmentation (MedSegDiff-style) on 2D slices: denoise a mask given the image."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "conf"
CONFIG_NAME = "config"
TRAIN = "recipes.diffusion.train:train"
