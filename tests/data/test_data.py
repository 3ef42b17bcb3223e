import io
from operator import attrgetter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segpipe.data import FolderDataModule
from segpipe.data.sources.pairing import pair_by_stem
from segpipe.data.splits import split_cases
from segpipe.errors import DataError
from segpipe.io.images import read_image, read_mask
from segpipe.preprocessing.normalize import pixel_statistics


def test_readers_keep_bit_depth_and_channels(tmp_path: Path):
    img16 = (np.arange(35 * 33, dtype=np.uint16).reshape(35, 33) * 50).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img16)
    rgb = np.random.default_rng(0).integers(0, 255, (17, 19, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    a = read_image(tmp_path / "a.tif")
    assert a.shape == (35, 33, 1) and a.dtype == np.uint16 and a.max() == img16.max()
    assert read_image(tmp_path / "b.jpg").shape == (17, 19, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)


def test_mask_reader_refuses_rgb_and_fractional_masks(tmp_path: Path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "frac.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(DataError, match="RGB"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="non-integer"):
        read_mask(tmp_path / "frac.tif")


def test_unreadable_files_are_named(tmp_path: Path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="empty") as err:
        read_image(tmp_path / "empty.png")
    assert err.value.path == tmp_path / "empty.png"
    with pytest.raises(DataError, match="cannot be decoded"):
        read_image(tmp_path / "junk.png")


def test_pairing_reports_unpaired_files_by_name(flat_dataset: Path):
    (flat_dataset / "masks" / "case_03.png").unlink()
    with pytest.raises(DataError, match=r"case_03\.png: has no mask"):
        pair_by_stem(flat_dataset / "images", flat_dataset / "masks", (".png",), (".png",))


def test_seeded_split_is_disjoint_complete_and_reproducible(flat_dataset: Path):
    cases = pair_by_stem(flat_dataset / "images", flat_dataset / "masks", (".png",), (".png",))
    a = split_cases(cases, 0.25, 0.25, seed=3, key=attrgetter("name"))
    b = split_cases(cases, 0.25, 0.25, seed=3, key=attrgetter("name"))
    c = split_cases(cases, 0.25, 0.25, seed=4, key=attrgetter("name"))
    names = {k: {x.name for x in v} for k, v in a.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    assert set().union(*names.values()) == {x.name for x in cases}
    assert a == b and a != c


def test_datamodule_yields_normalised_tensors_and_augments_only_training(split_dataset: Path):
    dm = FolderDataModule(
        root=str(split_dataset),
        batch_size=4,
        num_workers=0,
        train_transforms=[{"name": "HorizontalFlip", "p": 1.0}],
    )
    assert dm.resolved_layout() == "splits"
    assert dm.check(num_classes=3, in_channels=1) == []
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 1, 37, 33) and train["image"].dtype == torch.float32
    assert train["mask"].dtype == torch.int64
    sample = dm.datasets["train"][0]
    assert sample["image"].mean().abs() < 1e-4 and (sample["image"].std() - 1).abs() < 1e-2
    raw = np.asarray(Image.open(split_dataset / "train" / "masks" / f"{sample['name']}.png"))
    np.testing.assert_array_equal(sample["mask"].numpy(), raw[:, ::-1])
    val = dm.datasets["val"][0]
    raw_val = np.asarray(Image.open(split_dataset / "val" / "masks" / f"{val['name']}.png"))
    np.testing.assert_array_equal(val["mask"].numpy(), raw_val)


def test_check_finds_label_out_of_range_and_channel_mismatch(split_dataset: Path):
    dm = FolderDataModule(root=str(split_dataset), num_workers=0)
    problems = dm.check(num_classes=2, in_channels=1)
    assert problems and all("outside the 2 classes" in p.problem for p in problems)
    assert dm.check(num_classes=3, in_channels=3)[0].problem == "has 1 channels, the model expects 3"


def test_unknown_transform_gets_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'HorizontalFlip'"):
        FolderDataModule(train_transforms=[{"name": "HorizontalFlp"}])


def test_datamodules_save_plain_hyperparameters_that_load_with_weights_only(tmp_path: Path):
    from segpipe.data import VolumeDataModule
    from segpipe.data.demos.mni2d import MNIDemoDataModule
    from segpipe.data.modules.classification import ClassificationFolderDataModule

    modules = [
        FolderDataModule(root=str(tmp_path), train_transforms=[{"name": "HorizontalFlip", "p": 0.5}]),
        MNIDemoDataModule(root=str(tmp_path), batch_size=3),
        ClassificationFolderDataModule(root=str(tmp_path)),
        VolumeDataModule(root=str(tmp_path), patch_size=[8, 8, 8], spacing=(1.0, 1.0, 2.0)),
    ]
    for dm in modules:
        saved = dict(dm.hparams)
        buffer = io.BytesIO()
        torch.save({"datamodule_hyper_parameters": saved}, buffer)
        buffer.seek(0)
        assert torch.load(buffer, weights_only=True)["datamodule_hyper_parameters"] == saved
        assert saved["root"] == str(tmp_path)
    assert modules[1].hparams["batch_size"] == 3 and modules[1].hparams["layout"] == "splits"


def test_dataset_normalization_uses_every_training_pixel_per_channel(split_dataset: Path):
    dm = FolderDataModule(root=str(split_dataset), normalization="dataset", batch_size=2, num_workers=0)
    pixels = np.concatenate(
        [read_image(p).astype(np.float64).ravel() for p in sorted(split_dataset.glob("train/images/*"))]
    )
    statistics = dm.statistics()
    np.testing.assert_allclose(statistics["mean"], [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(statistics["std"], [pixels.std()], rtol=1e-12)
    assert (dm.plan().normalization, dm.plan().mean, dm.plan().std) == (
        "dataset",
        statistics["mean"],
        statistics["std"],
    )
    dm.setup("fit")
    sample = dm.datasets["val"][0]
    raw = read_image(dm.cases()["val"][0].image)[..., 0].astype(np.float32)
    expected = (raw - np.float32(statistics["mean"][0])) / np.float32(statistics["std"][0])
    np.testing.assert_allclose(sample["image"][0].numpy(), expected, rtol=1e-6)


def test_pixel_statistics_pool_images_of_different_sizes():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (5, 7, 2)).astype(np.uint8), rng.integers(0, 255, (3, 4, 2)).astype(np.uint8)]
    mean, std = pixel_statistics(images)
    pooled = np.concatenate([i.reshape(-1, 2) for i in images]).astype(np.float64)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-12)
