"""3D and 2D (``dims=2d``) semantic segmentation with MONAI networks, losses and metrics."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "conf"
CONFIG_NAME = "config"
TRAIN = "recipes.segmentation.train:train"
PREDICT = "recipes.segmentation.predict:predict"
EVALUATE = "recipes.components.testtime.summary:evaluate"
#: Can every file of a data config be read, and does data.test hold out cases training
#: would not see? (problems as messages; runner plan calls it)
CHECK_DATA = "recipes.components.data.preflight:check_data"
#: The dataset's case ids (the runner checks a matrix's ``cv`` fold counts against them).
CASES = "recipes.components.data.readable:case_ids"
#: Choices the recipe names but can't offer here, each with why (plain data: the runner
#: refuses them at plan time with this reason, instead of "unknown choice").
UNAVAILABLE = {
    "model": {
        "umamba": (
            "U-Mamba (a baseline of the stroke paper) is not in this recipe: its only "
            "implementation (bowang-lab/U-Mamba, an nnU-Net v2 fork, not on PyPI) needs "
            "mamba-ssm, whose selective scan exists only as CUDA kernels (mamba-ssm "
            "2.3.2.post1 does not install without CUDA; installed without its kernels, its "
            "import fails on selective_scan_cuda), so no U-Mamba can be built or tested on a "
            "CPU machine; train it with the authors' fork on a CUDA machine"
        )
    }
}
#: Train a cell's first steps and predict its cost (``runner profile``).
PROFILE = "recipes.segmentation.profile:profile"
