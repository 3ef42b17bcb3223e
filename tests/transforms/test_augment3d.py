"""3D augmentation built from YAML entries: what each transform does to a patch, the window cut around it,
the 2D counterparts for slices, and one-line errors for bad entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import CenterSpatialCrop, RandRotated

from segpipe.data.sampling import PatchSampling
from segpipe.data.volume_datasets import untracked_metadata
from segpipe.errors import SegpipeError
from segpipe.transforms.augment3d import (
    DEFAULT_3D_AUGMENTATION,
    build_augmentation,
    in_plane_augmentation,
    resolve_augmentation,
    sampling_window,
    split_at_crop,
)

LABELS = {0, 1, 3}


def item(shape: tuple[int, ...] = (13, 11, 7), seed: int = 0) -> dict[str, torch.Tensor]:
    """A positive image (1, *shape) and a mask (1, *shape) of labels 0, 1 and 3 in blocks."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(1.0, 2.0, (1, *shape)).astype(np.float32)
    mask = np.zeros((1, *shape), np.int64)
    mask[:, 2:7] = 1
    mask[:, 8:, 3:] = 3
    return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}


def run(steps: list, data: dict, seed: int = 1) -> dict:
    out = dict(data)
    for step in steps:
        step.set_random_state(seed=seed)
        out = step(out)
    return out


def test_a_flip_equals_numpys_flip_of_image_and_mask():
    data = item()
    out = run(build_augmentation([{"name": "RandFlipd", "spatial_axis": [1], "prob": 1.0}], 3), data)
    assert np.array_equal(np.asarray(out["image"]), np.flip(data["image"].numpy(), axis=2))
    assert np.array_equal(np.asarray(out["mask"]), np.flip(data["mask"].numpy(), axis=2))


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "RandAdjustContrastd", "gamma": [0.7, 1.5], "prob": 1.0},
        {"name": "RandGaussianNoised", "std": 0.1, "prob": 1.0},
        {"name": "RandGaussianSmoothd", "sigma_x": [0.5, 1.0], "prob": 1.0},
        {"name": "RandScaleIntensityd", "factors": 0.25, "prob": 1.0},
        {"name": "RandSimulateLowResolutiond", "zoom_range": [0.5, 0.6], "prob": 1.0},
    ],
    ids=lambda entry: entry["name"],
)
def test_intensity_transforms_change_the_image_and_leave_the_mask(entry: dict):
    data = item()
    out = run(build_augmentation([entry], 3), data)
    assert out["image"].shape == data["image"].shape
    assert not torch.allclose(torch.as_tensor(out["image"]), data["image"])
    assert torch.equal(torch.as_tensor(out["mask"]), data["mask"])


def test_gamma_with_retained_statistics_keeps_mean_and_std():
    data = item()
    entry = {"name": "RandAdjustContrastd", "gamma": [1.4, 1.5], "retain_stats": True, "prob": 1.0}
    image = torch.as_tensor(run(build_augmentation([entry], 3), data)["image"])
    assert image.mean().item() == pytest.approx(data["image"].mean().item(), rel=1e-4)
    assert image.std().item() == pytest.approx(data["image"].std().item(), rel=1e-3)


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "RandRotated", "range_x": 0.5, "range_y": 0.5, "range_z": 0.5, "prob": 1.0},
        {"name": "RandZoomd", "min_zoom": 0.7, "max_zoom": 1.4, "prob": 1.0},
        {"name": "Rand3DElasticd", "sigma_range": [2, 3], "magnitude_range": [20, 40], "prob": 1.0},
    ],
    ids=lambda entry: entry["name"],
)
def test_resampling_moves_image_and_mask_and_keeps_mask_values_labels(entry: dict):
    data = item()
    out = run(build_augmentation([entry], 3), data)
    mask = torch.as_tensor(out["mask"])
    assert out["image"].shape == data["image"].shape and mask.shape == data["mask"].shape
    assert not torch.equal(mask, data["mask"])  # the mask moved with the image
    assert set(mask.unique().tolist()) <= LABELS  # nearest neighbour: no 0.5s or 2s between labels


@pytest.mark.parametrize("signs", [(1, 1, 1), (1, -1, 1), (-1, 1, -1), (-1, -1, -1)])
def test_the_largest_rotation_of_the_window_leaves_no_padding_in_the_patch(signs: tuple[int, int, int]):
    patch = (16, 12, 8)
    ranges = {"range_x": 0.52, "range_y": 0.52, "range_z": 0.52}
    window = sampling_window(patch, [{"name": "RandRotated", **ranges}])
    angles = [(s * 0.52, s * 0.52) for s in signs]  # the largest angles, each sign
    turn = RandRotated("image", *angles, prob=1.0, padding_mode="zeros")  # zeros show any padding

    def turned_centre(size: tuple[int, ...]) -> torch.Tensor:
        turned = torch.as_tensor(turn({"image": torch.rand(1, *size) + 1.0})["image"])
        return CenterSpatialCrop(patch)(turned)

    assert turned_centre(window).min() >= 1.0  # the image is in [1, 2]
    assert turned_centre(patch).min() == 0.0  # without the window, the corners are padding


def test_augmented_windows_from_inside_a_volume_are_patches_of_its_data():
    volume = item(shape=(60, 60, 40))
    volume["mask"][:] = 0
    volume["mask"][:, 27:33, 27:33, 18:22] = 3  # centres of foreground patches: their windows fit inside
    rotation = {"name": "RandRotated", "range_x": 0.52, "range_y": 0.52, "range_z": 0.52, "prob": 1.0}
    sampling = PatchSampling((16, 16, 8), 2, foreground_fraction=1.0, augmentation=(rotation,))
    transform = sampling.after_preprocessing(train=True)
    for seed in range(3):
        transform.set_random_state(seed=seed)
        with untracked_metadata():
            patches = transform({"image": volume["image"].numpy(), "mask": volume["mask"].numpy()})
        for patch in patches:
            assert patch["image"].shape == (1, 16, 16, 8) and patch["image"].dtype == torch.float32
            assert patch["mask"].shape == (16, 16, 8) and patch["mask"].dtype == torch.int64
            assert patch["image"].min() >= 1.0  # the image is in [1, 2]: no zero from padding
            assert set(patch["mask"].unique().tolist()) == {0, 3}


def test_the_window_holds_the_turned_and_zoomed_out_patch():
    assert sampling_window((16, 16, 8), []) == (16, 16, 8)
    assert sampling_window((16, 16, 8), [{"name": "RandFlipd"}]) == (16, 16, 8)
    assert sampling_window((16, 20, 8), [{"name": "RandZoomd", "min_zoom": 0.5}]) == (32, 40, 16)
    assert sampling_window((16, 20, 8), [{"name": "RandZoomd", "min_zoom": 1.2}]) == (16, 20, 8)
    # 10 x 10 turned by up to 30 degrees: 10 cos 30 + 10 sin 30 = 13.66 per side
    assert sampling_window((10, 10), [{"name": "RandRotated", "range_x": 0.5236}]) == (14, 14)
    # up to 90 degrees reaches the diagonal, 22.4, on both sides
    assert sampling_window((10, 20), [{"name": "RandRotated", "range_x": [-1.6, 1.6]}]) == (23, 23)
    # a turn about z (the third axis) leaves z alone
    assert sampling_window((10, 10, 5), [{"name": "RandRotated", "range_z": 0.5236}]) == (14, 14, 5)


def test_the_default_set_is_nnunets_and_builds_in_3d_and_for_slices():
    entries = resolve_augmentation("default")
    assert entries == list(DEFAULT_3D_AUGMENTATION) and entries is not DEFAULT_3D_AUGMENTATION
    assert [e["name"] for e in entries].count("RandFlipd") == 3
    assert len(build_augmentation(entries, 3)) == len(entries)
    in_plane = in_plane_augmentation(entries, slice_axis=2)
    assert len(build_augmentation(in_plane, 2)) == len(entries) - 1  # the flip along z has no 2D form
    on_window, on_patch = split_at_crop(entries)
    assert [e["name"] for e in on_window] == ["RandRotated", "RandZoomd"]
    assert len(on_patch) == len(entries) - 2


def test_slices_get_the_in_plane_rotation_and_renumbered_flips():
    entries = [
        {"name": "RandRotated", "range_x": 0.1, "range_y": 0.2, "range_z": 0.3, "prob": 0.5},
        {"name": "RandFlipd", "spatial_axis": [0, 1], "prob": 0.5},
        {"name": "RandFlipd", "spatial_axis": 1, "prob": 0.5},
        {"name": "RandZoomd", "min_zoom": 0.8, "prob": 0.5},
    ]
    assert in_plane_augmentation(entries, slice_axis=1) == [
        {"name": "RandRotated", "range_x": 0.2, "prob": 0.5},
        {"name": "RandFlipd", "spatial_axis": [0], "prob": 0.5},
        {"name": "RandZoomd", "min_zoom": 0.8, "prob": 0.5},
    ]
    data = {"image": torch.rand(1, 9, 7), "mask": torch.zeros(1, 9, 7, dtype=torch.int64)}
    flip = build_augmentation([{"name": "RandFlipd", "spatial_axis": [1], "prob": 1.0}], 2)
    assert torch.equal(torch.as_tensor(run(flip, data)["image"]), data["image"].flip(2))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([{"name": "RandRotate"}], r"augmentation\[0\] RandRotate: unknown transform; did you mean 'RandRotated'\?"),
        ([{"name": "RandFlipd"}, {"name": "RandZoomd", "min_zom": 0.5}], r"augmentation\[1\] RandZoomd: 'min_zom'"),
        ([{"name": "RandZoomd", "mode": "nearest"}], r"'mode' is set by segpipe; valid: prob, min_zoom, max_zoom"),
        ([{"name": "RandAdjustContrastd", "gamma": -1}], r"augmentation\[0\] RandAdjustContrastd: .*gamma"),
        ([{"prob": 0.5}], r"augmentation\[0\] must be a mapping with a 'name' key"),
        ("defaults", r"augmentation must be a list of transforms or 'default'"),
    ],
)
def test_a_bad_entry_is_one_line_naming_it_and_the_valid_choices(spec, message: str):
    with pytest.raises(SegpipeError, match=message) as caught:
        build_augmentation(resolve_augmentation(spec), 3)
    assert "\n" not in str(caught.value)


def test_an_unknown_name_lists_the_valid_names():
    with pytest.raises(SegpipeError, match="valid: RandRotated, RandZoomd, Rand3DElasticd, RandFlipd"):
        build_augmentation([{"name": "Affined"}], 3)


def test_3d_elastic_deformation_is_refused_for_slices():
    with pytest.raises(SegpipeError, match=r"Rand3DElasticd has no 2D counterpart"):
        PatchSampling((16, 16), training_mode="slices", augmentation=({"name": "Rand3DElasticd"},)).steps()
