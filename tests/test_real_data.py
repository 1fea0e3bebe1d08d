"""Real NIfTI volumes with real spacing and affines through the same path as the demo data.

The images come from a Debian package (insighttoolkit5-examples: a T1 brain of 128x128x62
voxels at 2x2x3 mm with a k-means tissue segmentation on the same grid), laid out at test time
as an MSD dataset. One subject: this proves the real-format path (NIfTI, affines, spacing,
label maps, every metric), not generalization.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlflow import MlflowClient

from runner.cli import main
from runner.plan import make_plan
from tests.e2e import matrix_text

pytestmark = pytest.mark.slow
PACKAGE = "insighttoolkit5-examples"
DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
IMAGE, LABELS = "KmeansTest_T1UCharRaw.nii.gz", "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"


def _ensure_package() -> None:
    if (DATA / IMAGE).exists():
        return
    if (
        shutil.which("apt-get") is None
        or subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0"
    ):
        pytest.skip(f"needs Debian's {PACKAGE} (apt-get as root) for real NIfTI volumes")
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE],
        check=True,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        timeout=600,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MSD-layout dataset: the real volume and its left-right / front-back mirrors."""
    _ensure_package()
    root = tmp_path_factory.mktemp("itk") / "Task01_T1Tissue"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image, labels = nib.load(DATA / IMAGE), nib.load(DATA / LABELS)
    t1 = np.asarray(image.dataobj).astype(np.float32)
    kmeans = np.asarray(labels.dataobj)
    # k-means classes 0-1 are background; 2-3 darker tissue; 4-6 brighter tissue.
    tissue = np.select([kmeans >= 4, kmeans >= 2], [2, 1], 0).astype(np.uint8)
    training = []
    for i, flip in enumerate([(), (0,), (1,), (0, 1)]):
        name = f"t1_{i:03d}.nii.gz"
        img = np.flip(t1, flip) if flip else t1
        lab = np.flip(tissue, flip) if flip else tissue
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(img), image.affine, image.header),
            root / "imagesTr" / name,
        )
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(lab), labels.affine), root / "labelsTr" / name
        )
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "T1Tissue",
                "modality": {"0": "T1"},
                "labels": {"0": "background", "1": "dark", "2": "bright"},
                "numTraining": len(training),
                "training": training,
            }
        )
    )
    return root


def test_real_volumes_train_and_every_metric_is_computed(project: Path, msd_root: Path) -> None:
    uri = f"sqlite:///{project / 'mlruns.db'}"
    path = project / "real.yaml"
    extra = [
        "data.synthetic=false",
        "data.in_channels=1",
        "data.num_classes=3",
        "training.metrics.hd95=true",
        "training.metrics.surface_dice=true",
        "training.patch_size=[32,32,32]",
    ]
    path.write_text(
        matrix_text("real_t1", msd_root, "  model: [unet]", "{kind: debug}", uri, extra)
    )
    assert main(["sweep", str(path)]) == 0
    plan = make_plan(path)
    state = plan.states()[plan.cells[0].id]
    assert state.state == "done"
    run = MlflowClient(tracking_uri=uri).get_run(state.run_id)
    metrics = run.data.metrics
    for key in (
        "val_dice",
        "val_dice_dark",
        "val_dice_bright",
        "val_hd95",
        "val_surface_dice",
        "best_val_dice",
    ):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert 0 <= metrics["val_dice"] <= 1
    assert metrics["val_hd95"] > 0  # in mm, with the volume's real 2x2x3 mm spacing
    assert run.data.params["data.num_classes"] == "3"
