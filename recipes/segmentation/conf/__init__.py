"""Config groups (one directory per axis) of the segmentation recipe; a package so that other
recipes can put it on their Hydra search path (pkg://recipes.segmentation.conf)."""
