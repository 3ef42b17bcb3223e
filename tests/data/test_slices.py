"""2D networks on volumes: slices drawn for training, whole volumes scored slice by slice."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from builders import AFFINE, SHAPE, tiny_3d_config, write_volumes
from monai.transforms import Compose

from segpipe.cli import main
from segpipe.config import read_config
from segpipe.data import VolumeDataModule
from segpipe.errors import SegpipeError
from segpipe.io.volumes import write_label, write_volume
from segpipe.tasks import SegmentationTask

ROOT = Path(__file__).resolve().parents[2]


def slice_module(root: Path, **kwargs) -> VolumeDataModule:
    # orientation None keeps the voxel order of SHAPE (AFFINE is not RAS).
    options = {"val_fraction": 0.25, "num_workers": 0, "batch_size": 1, "training_mode": "slices", "orientation": None}
    options.update(kwargs)
    return VolumeDataModule(root=str(root), **options)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_whole_slices_drawn_for_training_are_slices_of_the_volume(tmp_path: Path, axis: int):
    root = write_volumes(tmp_path / "data", n=4)
    in_plane = [s for i, s in enumerate(SHAPE) if i != axis]
    dm = slice_module(root, slice_axis=axis, patch_size=in_plane, samples_per_volume=3, cache="memory")
    dm.setup("fit")
    [batch, *_] = list(dm.train_dataloader())
    assert batch["image"].shape == (3, 1, *in_plane) and batch["mask"].shape == (3, *in_plane)
    case = next(c for c in dm.cases()["train"] if c.name == batch["name"][0])
    volume = Compose(dm.preprocessing())({"case": case})
    image, mask = np.asarray(volume["image"])[0], volume["mask"][0]
    for sample, labels in zip(batch["image"][:, 0].numpy(), batch["mask"].numpy(), strict=True):
        matches = [k for k in range(SHAPE[axis]) if np.array_equal(np.take(image, k, axis), sample)]
        assert len(matches) == 1 and np.array_equal(np.take(mask, matches[0], axis), labels)
    # Val volumes stay whole for slice-by-slice scoring.
    assert dm.datasets["val"][0]["image"].shape == (1, *SHAPE)


def test_foreground_oversampling_picks_slices_through_the_foreground(tmp_path: Path):
    root = tmp_path / "data"
    label = np.zeros(SHAPE, np.uint8)
    label[5:9, 6:10, 11] = 1  # foreground on one z slice of 16
    image = np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32)
    for i in range(3):
        write_volume(root / "images" / f"v{i}.nii.gz", image, AFFINE)
        write_label(root / "labels" / f"v{i}.nii.gz", label, AFFINE)

    def slices(fraction: float) -> list[torch.Tensor]:
        dm = slice_module(root, patch_size=(12, 12), samples_per_volume=4, foreground_fraction=fraction, cache="disk")
        dm.prepare_data()
        dm.setup("fit")
        torch.manual_seed(0)
        return [m for _ in range(4) for b in dm.train_dataloader() for m in b["mask"]]

    assert all(bool((m > 0).any()) for m in slices(1.0))  # 2 volumes x 4 slices x 4 epochs
    assert sum(bool((m > 0).any()) for m in slices(0.0)) <= 8  # without oversampling: 1 slice in 16 has any


@pytest.mark.parametrize("axis", [0, 2])
def test_a_2d_network_scores_a_volume_slice_by_slice(axis: int):
    torch.manual_seed(0)
    model_kwargs = {"depth": 2, "base_channels": 4}
    task = SegmentationTask(
        spatial_dims=2, num_classes=3, model_kwargs=model_kwargs, inference_batch_size=3, slice_axis=axis
    )
    task.eval()
    volume = torch.randn(2, 1, 13, 11, 7)
    with torch.no_grad():
        logits = task.infer(volume)
        per_slice = [task(volume.select(2 + axis, k)) for k in range(volume.shape[2 + axis])]
    assert logits.shape == (2, 3, 13, 11, 7)
    torch.testing.assert_close(logits, torch.stack(per_slice, dim=2 + axis), rtol=1e-5, atol=1e-5)


def test_the_network_must_fit_the_training_mode(tmp_path: Path):
    root = write_volumes(tmp_path / "data", n=4)
    slices = slice_module(root, patch_size=(16, 16), slice_axis=1)
    slices.check_model(spatial_dims=2, slice_axis=1)
    with pytest.raises(SegpipeError, match="spatial_dims is 3"):
        slices.check_model(spatial_dims=3)
    with pytest.raises(SegpipeError, match=r"slice_axis 1 differs from model\.slice_axis 2"):
        slices.check_model(spatial_dims=2, slice_axis=2)
    with pytest.raises(SegpipeError, match="training_mode slices for a 2D network"):
        VolumeDataModule(root=str(root), patch_size=(8, 8, 8)).check_model(spatial_dims=2)
    with pytest.raises(ValueError, match="2 positive sizes"):
        slice_module(root, patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match="slice_axis must be 0, 1 or 2"):
        slice_module(root, patch_size=(8, 8), slice_axis=3)


@pytest.mark.slow
def test_unet2d_slices_config_trains_on_slices_and_scores_whole_volumes(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["fit", "--config", str(ROOT / "configs" / "unet2d_slices.yaml"), "--trainer.max_epochs", "1"]
    args += ["--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu"]
    args += ["--trainer.enable_progress_bar", "false"]
    args += ["--model.model_kwargs.base_channels", "4", "--model.model_kwargs.depth", "3"]
    args += ["--data.init_args.samples_per_volume", "3", "--data.init_args.num_workers", "0"]
    args += ["--model_logging.enabled", "false", "--overlays.every_n_epochs", "0"]
    assert main(args) == 0
    config = read_config(["--config", str(ROOT / "configs" / "unet2d_slices.yaml")])
    assert config.data.init_args.training_mode == "slices" and config.model.spatial_dims == 2
    assert list(Path("data/demo3d/.segpipe_cache").rglob("mni152_slab*.npz"))  # the slabs were cached on disk

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["segpipe-demo3d-unet2d-slices"], output_format="list")
    assert 0.0 <= run.data.metrics["val/dice"] <= 1.0 and np.isfinite(run.data.metrics["val/loss"])
    assert "test/dice_pooled" in run.data.metrics
    metadata = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/run/metadata.json")
    assert metadata["metadata"]["model.summary_input"] == "1x1x72x90"  # the 2D network's size is that of a slice
    [report] = Path("outputs").rglob("test_report/test_cases.csv")
    cases = {row["case"] for row in csv.DictReader(report.open())}
    split = yaml.safe_load(Path("data/demo3d/split.yaml").read_text())
    assert cases == set(split["test"])  # one row set per test volume, not per slice


@pytest.mark.slow
def test_fit_refuses_a_2d_network_on_3d_patches_with_exit_2(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_3d_config(write_volumes(tmp_path / "data", n=4))
    config["model"]["spatial_dims"] = 2
    (tmp_path / "mismatch.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "mismatch.yaml"]) == 2
    assert "model.spatial_dims 2 does not train on 3D patches" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
