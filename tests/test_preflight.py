"""What `runner plan` and `runner sweep` check before anything is submitted: a dataset the
recipe can't read is refused (on a cluster that would be every job failing after queueing),
naming the file, its extension and what reads it; an sqlite store for SLURM cells is warned
about, with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli import main


def _nnunet_raw(root: Path, ending: str) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in ("a", "b"):
        (root / "imagesTr" / f"{case}_0000{ending}").write_bytes(b"")
        (root / "labelsTr" / f"{case}{ending}").write_bytes(b"")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}}
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ending}))
    return root


def _matrix(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: readable\nrecipe: segmentation\n"
        f"base: [data=datalist, data.format=auto, data.root={root}, data.in_channels=1]\n"
        "axes: {seed: [0, 1]}\n"
    )
    return path


def test_an_unreadable_extension_is_refused_at_plan_and_sweep_time(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _matrix(project, _nnunet_raw(project / "raw", ".foo"))
    for command in ("plan", "sweep"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert "the data can't be read" in err and "Traceback" not in err
        assert "imagesTr/a_0000.foo (and " in err and "no reader for extension '.foo'" in err
        assert ".nii.gz" in err  # what the recipe does read
    assert not (project / "sweeps").exists()  # nothing recorded


def test_data_that_cannot_be_found_warns_at_plan_and_stops_a_sweep(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan` may look at a matrix away from its data; `sweep` must not submit it."""
    path = _matrix(project, project / "not_here")
    assert main(["plan", str(path)]) == 0
    assert "not_here" in capsys.readouterr().err
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the data can't be read" in err and "not_here" in err
    assert not (project / "sweeps").exists()


def test_an_sqlite_store_for_slurm_cells_is_warned_about_with_the_fix(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Many SLURM tasks writing one sqlite file: unsafe on NFS, unreachable from other
    nodes on a local disk. `plan` says so and names the fix; a server URI is quiet."""
    from runner.sweep.preflight import filesystem_of

    assert filesystem_of(project) not in ("", "unknown")
    path = project / "m.yaml"
    executor = "executor: {kind: slurm, time_min: 10}\n"
    body = "name: tracked\nrecipe: segmentation\naxes: {seed: [0]}\n" + executor
    path.write_text(body + "tracking: {uri: 'sqlite:///mlruns.db'}\n")
    assert main(["plan", str(path)]) == 0
    err = capsys.readouterr().err
    assert "is an sqlite file on" in err and "mlflow server" in err and "tracking.uri" in err
    assert "the fix: run `mlflow server" in err and "tracking.uri: http://" in err, err
    path.write_text(body + "tracking: {uri: 'http://127.0.0.1:5999'}\n")
    assert main(["plan", str(path)]) == 0
    assert "sqlite" not in capsys.readouterr().err


def test_plan_says_which_store_the_cells_write_to_and_how(project: Path) -> None:
    """The line `runner plan` prints: the resolved store, the filesystem of an sqlite file,
    and that a refused write is retried, spooled and uploaded by status/sweep/resume."""
    from runner.plan import make_plan
    from runner.sweep.preflight import describe_store, filesystem_of

    path = project / "m.yaml"
    body = "name: tracked\nrecipe: segmentation\naxes: {seed: [0]}\n"
    path.write_text(body)  # the default store
    line = describe_store(make_plan(path, project))
    db = f"sqlite:///{project}/mlruns.db"
    assert line.startswith(f"tracking: cells write to {db} (an sqlite file on "), line
    assert filesystem_of(project) in line and "directly" in line
    assert "spool" in line and "`runner status`" in line and "`runner sync`" in line
    path.write_text(body + "tracking: {uri: 'http://127.0.0.1:5999'}\n")
    line = describe_store(make_plan(path, project))
    assert line.startswith("tracking: cells write to the MLflow server http://127.0.0.1:5999;")


@pytest.mark.slow
def test_a_sweep_to_an_unreachable_slurm_controller_says_so_and_records_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flagship command on a machine whose controller can't be reached: one clear
    error with SLURM's own words and what to check, exit 2, no attempt in the ledger."""
    monkeypatch.setenv("SLURM_CONF", str(project / "no-such-slurm.conf"))
    path = project / "m.yaml"
    path.write_text(
        "name: unreachable\nrecipe: segmentation\naxes: {seed: [0, 1]}\n"
        "executor: {kind: slurm, time_min: 10}\n"
    )
    for _ in range(2):  # every try, not only the first, leaves nothing behind
        assert main(["sweep", str(path)]) == 2
        err = capsys.readouterr().err
        assert "SLURM controller can't be reached" in err and "make slurm-up" in err
        assert "Traceback" not in err
    attempts = list((project / "sweeps").glob("unreachable/cells/*/attempts/*"))
    assert attempts == []


def test_plan_warns_of_an_unreachable_slurm_controller(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan` is for looking: it warns where `sweep` would refuse (exit 0, nothing written)."""
    monkeypatch.setenv("PATH", str(project))  # no SLURM client on this PATH
    path = project / "m.yaml"
    path.write_text(
        "name: planned\nrecipe: segmentation\naxes: {seed: [0]}\n"
        "executor: {kind: slurm, time_min: 10}\ntracking: {uri: 'http://127.0.0.1:5999'}\n"
    )
    assert main(["plan", str(path)]) == 0
    err = capsys.readouterr().err
    assert "the SLURM controller can't be reached here: no SLURM client (sinfo) on PATH" in err
    assert "(`runner sweep` refuses this)" in err
    assert not (project / "sweeps").exists()


def test_a_missing_dataset_names_the_variable_its_root_comes_from(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "m.yaml"
    path.write_text("name: isles\nrecipe: segmentation\nbase: [data=isles24]\naxes: {seed: [0]}\n")
    monkeypatch.delenv("ISLES24_ROOT", raising=False)
    assert main(["plan", str(path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "data.root is $ISLES24_ROOT, which is not set here" in err, err
    assert "set ISLES24_ROOT to the dataset's folder" in err
    monkeypatch.setenv("ISLES24_ROOT", str(project / "isles"))
    assert main(["plan", str(path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"(data.root is $ISLES24_ROOT: {project / 'isles'})" in err, err
