"""Test time: read new images, predict them on their own grid, score predictions.

- :mod:`.inputs`: nnU-Net-named input folders (``CASE_0000.nii.gz``, ...) and which channel
  file feeds which network input, checked before any model is loaded;
- :mod:`.held_out`: ``data.test``, the cases never used for training or selection;
- :mod:`.inference`: sliding window with Gaussian blending, mirroring TTA, autocast, and the
  inverse of the preprocessing, so a prediction lands on its input's grid;
- :mod:`.summary`: Dice, IoU, HD95 and normalised surface Dice (MONAI, spacing-aware) per
  case and class, written as nnU-Net's ``summary.json``.
"""
