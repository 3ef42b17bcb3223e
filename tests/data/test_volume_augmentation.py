"""VolumeDataModule with ``augmentation``: batches of augmented patches or slices, seeded per sample (the
same for the same seed, and after a mid-epoch resume), and one-line errors before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from builders import loader_epoch, same_batches, tiny_3d_config, write_volumes

from segpipe.cli import main
from segpipe.data import VolumeDataModule
from segpipe.data.resumable import ResumableDataLoader
from segpipe.errors import SegpipeError


@pytest.fixture(autouse=True)
def run_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")


def train_loader(root: Path, augmentation: object = "default", **settings: object) -> ResumableDataLoader:
    settings = {"patch_size": (8, 8, 8), "cache": "memory"} | settings
    dm = VolumeDataModule(
        root=str(root), val_fraction=0.0, samples_per_volume=2, batch_size=2, num_workers=0,
        augmentation=augmentation, **settings,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_volumes(tmp_path_factory.mktemp("volumes") / "data", n=4)


def test_augmented_batches_have_the_patch_shape_dtypes_and_labels(volumes: Path):
    batches = loader_epoch(train_loader(volumes), 0)
    assert len(batches) == 2
    for batch in batches:
        assert batch["image"].shape == (4, 1, 8, 8, 8) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (4, 8, 8, 8) and batch["mask"].dtype == torch.int64
        assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
    plain = loader_epoch(train_loader(volumes, augmentation=None), 0)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(batches, plain, strict=True))


def test_the_same_seed_draws_the_same_augmented_batches_and_a_resumed_epoch_the_rest(volumes: Path):
    uninterrupted = loader_epoch(train_loader(volumes), 1)
    assert same_batches(loader_epoch(train_loader(volumes), 1), uninterrupted)
    other_epoch = loader_epoch(train_loader(volumes), 0)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(uninterrupted, other_epoch, strict=True))
    rest = loader_epoch(train_loader(volumes, cache="none"), 1, {"epoch": 1, "batches": 1, "batch_size": 2})
    assert same_batches(rest, uninterrupted[1:])


def test_slices_get_2d_augmentation(volumes: Path):
    entries = [
        {"name": "RandRotated", "range_z": 0.5, "prob": 1.0},
        {"name": "RandFlipd", "spatial_axis": [0, 2], "prob": 1.0},
        {"name": "RandAdjustContrastd", "gamma": [0.7, 1.5], "prob": 1.0},
    ]
    loader = train_loader(volumes, entries, patch_size=(8, 9), training_mode="slices")
    batch = loader_epoch(loader, 0)[0]
    assert batch["image"].shape == (4, 1, 8, 9) and batch["mask"].shape == (4, 8, 9)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
    assert len(loader_epoch(train_loader(volumes, "default", patch_size=(8, 9), training_mode="slices"), 0)) == 2


def test_a_bad_entry_is_refused_when_the_datasets_are_built(volumes: Path):
    with pytest.raises(SegpipeError, match=r"augmentation\[0\] RandRotated: 'range_w' is not an argument"):
        train_loader(volumes, [{"name": "RandRotated", "range_w": 0.5}])


def test_fit_refuses_a_bad_entry_in_one_line_before_training(
    volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.chdir(tmp_path)
    config = tiny_3d_config(volumes)
    config["trainer"]["logger"] = False  # the MLflow store is created with the logger, before any check
    config["data"]["init_args"]["augmentation"] = [{"name": "RandFlip", "prob": 0.5}]
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("segpipe: error:")]
    assert errors == [
        "segpipe: error: augmentation[0] RandFlip: unknown transform; did you mean 'RandFlipd'? valid: RandRotated, "
        "RandZoomd, Rand3DElasticd, RandFlipd, RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd, "
        "RandSimulateLowResolutiond, RandAdjustContrastd"
    ], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.yaml"]  # nothing written


@pytest.mark.slow
def test_fit_trains_with_the_default_augmentation(volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_3d_config(volumes)
    config["trainer"] |= {"max_epochs": 1, "logger": False}
    config["data"]["init_args"] |= {"augmentation": "default", "val_fraction": 0.25, "test_fraction": 0.0}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    assert list((tmp_path / "outputs").rglob("*.ckpt"))
