"""The dataset fingerprint: statistics equal numpy's on the same pixels, volumes cropped and reoriented,
modality from dataset.json, the cache, and bad datasets refused naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from builders import write_dataset, write_volumes
from PIL import Image

from segpipe.errors import DataError
from segpipe.io.volumes import read_label, read_volume
from segpipe.planning import DatasetFingerprint, dataset_fingerprint
from segpipe.planning.fingerprint import CACHE_FOLDER


def train_pixels(root: Path) -> tuple[np.ndarray, np.ndarray]:
    images = sorted((root / "train" / "images").glob("*.png"))
    pixels = np.concatenate([np.asarray(Image.open(p), np.float64).ravel() for p in images])
    masks = np.concatenate([np.asarray(Image.open(root / "train" / "masks" / p.name)).ravel() for p in images])
    return pixels, masks


def test_2d_statistics_equal_numpys_on_the_training_pixels(split_dataset: Path):
    fingerprint = dataset_fingerprint(split_dataset, use_cache=False)
    pixels, masks = train_pixels(split_dataset)
    assert fingerprint.layout == "folder" and fingerprint.spatial_dims == 2
    assert len(fingerprint.case_names) == 8 and fingerprint.shapes[0] == [37, 33]
    assert fingerprint.image_mean == pytest.approx([pixels.mean()], rel=1e-12)
    assert fingerprint.image_std == pytest.approx([pixels.std()], rel=1e-12)
    foreground = fingerprint.foreground_intensity[0]  # fewer than 10,000 foreground pixels per image: all of them
    assert foreground["mean"] == pytest.approx(pixels[masks > 0].mean())
    assert foreground["p99_5"] == pytest.approx(np.percentile(pixels[masks > 0], 99.5))
    assert fingerprint.class_fraction == pytest.approx(np.bincount(masks, minlength=3) / masks.size)
    assert fingerprint.smallest_class_voxels[2] == 36  # the 6x6 square of every case
    assert fingerprint.shared_intensity_scale  # one noisy intensity scale for every image


def test_images_of_different_scales_do_not_share_one(tmp_path: Path):
    root = write_dataset(tmp_path / "data", n=6)
    for i in range(0, 6, 2):  # every other image at a third of the brightness
        path = root / "images" / f"case_{i:02d}.png"
        Image.fromarray((np.asarray(Image.open(path)) // 3).astype(np.uint8)).save(path)
    assert not dataset_fingerprint(root, use_cache=False).shared_intensity_scale


def test_volumes_are_cropped_to_their_nonzero_box_and_reoriented(tmp_path: Path):
    root = write_volumes(tmp_path / "vols", n=3)
    image, meta = read_volume(root / "images" / "case_00.nii.gz")
    image[:, :3] = 0  # a zero border of 3 voxels on the first voxel axis of one case
    from segpipe.io.volumes import write_volume

    write_volume(root / "images" / "case_00.nii.gz", image[0], meta.affine)
    fingerprint = dataset_fingerprint(root, use_cache=False)
    # builders.AFFINE: voxel axis 0 runs along y (0.8 mm), axis 1 along x (1.2 mm), axis 2 along z (2.5 mm)
    assert fingerprint.spacings[1] == pytest.approx([1.2, 0.8, 2.5])
    assert fingerprint.shapes[1] == [20, 24, 16]
    assert fingerprint.shapes[0] == [20, 21, 16]
    assert fingerprint.anisotropy == pytest.approx(2.5 / 0.8)
    label, _ = read_label(root / "labels" / "case_01.nii.gz")
    assert fingerprint.smallest_class_voxels[2] <= 64 and fingerprint.smallest_component_mm3[2] == pytest.approx(
        fingerprint.smallest_component_voxels[2] * 1.2 * 0.8 * 2.5
    )
    assert fingerprint.modality is None and fingerprint.num_classes == 3 == label.max() + 1


def test_modality_from_dataset_json(tmp_path: Path):
    root = write_volumes(tmp_path / "vols", n=4)
    declaration = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(declaration))
    fingerprint = dataset_fingerprint(root, use_cache=False)
    assert fingerprint.modality == ["CT"] and fingerprint.class_names == ["background", "a", "b"]


def test_cached_beside_the_preprocessing_cache_and_recomputed_when_a_file_changes(split_dataset: Path):
    first = dataset_fingerprint(split_dataset)
    cached = list((split_dataset / CACHE_FOLDER).glob("fingerprint-*.json"))
    assert len(cached) == 1
    assert DatasetFingerprint.from_dict(json.loads(cached[0].read_text())) == first
    assert dataset_fingerprint(split_dataset) == first
    mask = split_dataset / "train" / "masks" / "case_00.png"
    Image.fromarray(np.zeros((37, 33), np.uint8)).save(mask)
    os.utime(mask, ns=(1, 1))
    changed = dataset_fingerprint(split_dataset)
    assert changed.class_fraction != first.class_fraction
    assert len(list((split_dataset / CACHE_FOLDER).glob("fingerprint-*.json"))) == 2


def test_a_bad_dataset_is_refused_naming_the_file(split_dataset: Path):
    (split_dataset / "train" / "masks" / "case_03.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"case_03\.png"):
        dataset_fingerprint(split_dataset)
    assert not (split_dataset / CACHE_FOLDER).exists()
