"""Tiny CLI runs: two folds fit (each choosing its post-processing), then `segpipe test` and `segpipe predict`
with `--ensemble` given as files, a folder and an MLflow experiment."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
from builders import tiny_3d_config, write_config, write_volumes

from segpipe.cli import main
from segpipe.inference.ensemble_members import resolve_members
from segpipe.io.checkpoints import safe_load

pytestmark = pytest.mark.slow  # two CLI fits


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir with two fold runs of a tiny 3D U-Net (1 epoch each) in the experiment ``tests3d``."""
    work = tmp_path_factory.mktemp("folds")
    data = write_volumes(work / "data", n=6)
    config = tiny_3d_config(data)
    config["trainer"]["max_epochs"] = 1
    config["data"]["init_args"] |= {"test_fraction": 0.2, "num_folds": 2}
    write_config(work / "config.yaml", config)
    for fold in (0, 1):
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(work)
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by mlflow.set_tracking_uri in other tests
            assert main(["fit", "--config", "config.yaml", "--data.init_args.fold", str(fold)]) == 0
    return work


@pytest.fixture(autouse=True)
def local_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run's own ``sqlite:///mlflow.db``, whatever store an earlier test left in the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def run(work: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.chdir(work)
    return main([args[0], "--config", "config.yaml", *args[1:]])


def test_fit_stores_the_postprocessing_decision_in_the_best_checkpoint(two_folds: Path):
    best = sorted(two_folds.glob("outputs/*/*/checkpoints/best-*.ckpt"))
    assert len(best) == 2
    for path in best:
        stored = safe_load(path)["postprocessing"]
        beside = json.loads((path.parent / "postprocessing.json").read_text())
        assert stored == beside
        assert set(stored["evidence"]) == {"1", "2"}  # the foreground classes
        assert stored["val_dice_after"] >= stored["val_dice_before"]
    checkpoint = safe_load(best[0])
    run = mlflow.MlflowClient(f"sqlite:///{two_folds / 'mlflow.db'}").get_run(checkpoint["mlflow"]["run_id"])
    after = checkpoint["postprocessing"]["val_dice_after"]
    assert run.data.metrics["postprocessing/val_dice_after"] == pytest.approx(after)


def test_folder_and_experiment_name_the_same_members(two_folds: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(two_folds)
    from_folder = resolve_members(["outputs"], "outputs", "sqlite:///mlflow.db")
    from_mlflow = resolve_members(["mlflow:tests3d"], "outputs", "sqlite:///mlflow.db")
    assert len(from_folder) == 2
    assert sorted(map(str, from_folder)) == sorted(map(str, from_mlflow))


def test_ensemble_predict_writes_masks_on_the_input_grid(two_folds: Path, monkeypatch: pytest.MonkeyPatch):
    args = ["--data.init_args.predict_dir", str(two_folds / "data" / "images"), "--predict_writer.output_dir", "ens"]
    assert run(two_folds, monkeypatch, "predict", "--ensemble", "outputs", *args) == 0
    written = sorted((two_folds / "ens").glob("*.nii.gz"))
    assert len(written) == 6
    source = nib.load(two_folds / "data" / "images" / written[0].name)
    mask = nib.load(written[0])
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-6)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_ensemble_test_reports_dice(two_folds: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    assert run(two_folds, monkeypatch, "test", "--ensemble", "mlflow:tests3d") == 0
    assert "ensemble of 2 checkpoints" in capsys.readouterr().out


def test_ckpt_path_and_ensemble_exclude_each_other(
    two_folds: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    best = str(next(two_folds.glob("outputs/*/*/checkpoints/best-*.ckpt")))
    assert run(two_folds, monkeypatch, "predict", "--ckpt_path", best, "--ensemble", best) == 2
    assert "--ckpt_path and --ensemble exclude each other" in capsys.readouterr().err
