"""Diffusion parts the recipes share: noise schedules and samplers (MONAI's), the denoisers
(MONAI's DiffusionModelUNet, our MedSegDiff), the diffusion losses and slice-wise sampling
validation over whole volumes."""
