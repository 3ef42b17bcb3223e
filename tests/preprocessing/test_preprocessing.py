"""Volume preprocessing: reorientation, crop, resampling and their inverse; CT normalisation; fingerprint."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from segpipe.data import VolumeDataModule
from segpipe.errors import DataError
from segpipe.io.volumes import read_geometry, read_volume, write_label, write_volume
from segpipe.preprocessing.geometry import VolumeGeometryd, geometry_record, restore_geometry, spacing_of
from segpipe.preprocessing.intensity import ClipIntensityd

SHAPE = (21, 17, 9)
SPACING = (0.8, 0.8, 2.5)
LPS = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, -12.5], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])


def oblique_permuted_affine() -> np.ndarray:
    """Voxel axes (0, 1, 2) along roughly (S, L, P), rotated 20 degrees about the S axis."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    axes = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float)  # columns: S, L, P in RAS coordinates
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes @ np.diag(SPACING)
    affine[:3, 3] = (-3.0, 11.0, 25.0)
    return affine


def world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """RAS mm coordinates (3, *shape) of every voxel centre."""
    index = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ index + affine[:3, 3:]).reshape(3, *shape)


def ramp(points: np.ndarray) -> np.ndarray:
    """A linear function of world position: linear interpolation reproduces it exactly."""
    return (0.3 * points[0] - 0.7 * points[1] + 1.1 * points[2]).astype(np.float32)


def ball(affine: np.ndarray, shape: tuple[int, ...], radius: float = 5.0) -> np.ndarray:
    """Label 1 inside a ball of ``radius`` mm around the volume's centre (in world space)."""
    points = world(affine, shape)
    centre = points.reshape(3, -1).mean(1).reshape(3, 1, 1, 1)
    return (((points - centre) ** 2).sum(0) < radius**2).astype(np.int64)


def item(affine: np.ndarray, shape: tuple[int, ...] = SHAPE) -> dict:
    image = ramp(world(affine, shape))[None]
    return {"image": image, "mask": ball(affine, shape)[None], "geometry": geometry_record("x.nii.gz", affine, shape)}


def one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels), num_classes).permute(3, 0, 1, 2).float()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


# ---- geometry: forward and back ----------------------------------------------------------------------
def test_resampling_to_a_spacing_and_back_returns_the_input_grid():
    data = item(LPS)
    out = VolumeGeometryd("RAS", spacing=(1.1, 1.1, 1.3))(data)
    geometry = out["geometry"]
    np.testing.assert_allclose(spacing_of(geometry["resampled_affine"]), (1.1, 1.1, 1.3), atol=1e-9)
    assert nib.aff2axcodes(geometry["resampled_affine"]) == ("R", "A", "S")
    # Each resampled voxel holds the ramp at the world position its affine gives: the affine is right
    # (checked where the new grid lies inside the old one; beyond it values are clamped to the border).
    shape = tuple(geometry["resampled_shape"])
    assert out["image"].shape == (1, *shape) and out["mask"].shape == (1, *shape)
    points = world(geometry["resampled_affine"], shape)
    source = np.einsum("ij,j...->i...", np.linalg.inv(LPS)[:3, :3], points) + np.linalg.inv(LPS)[:3, 3:, None, None]
    inside = np.all((source > -1e-6) & (source < np.reshape(SHAPE, (3, 1, 1, 1)) - 1 + 1e-6), axis=0)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(out["image"][0][inside], ramp(points)[inside], atol=1e-3)

    back = restore_geometry(torch.as_tensor(out["image"]), geometry).numpy()
    assert back.shape == (1, *SHAPE)
    # Linear in space, so resampled back exactly, except next to the faces where the two grids' extents
    # differ (the coarser grid's last voxel lies beyond the old one and holds the clamped border value).
    covered = tuple(slice(1, s - 1) for s in SHAPE)
    np.testing.assert_allclose(back[0][covered], data["image"][0][covered], atol=1e-3)

    restored = restore_geometry(one_hot(out["mask"][0], 2), geometry, fill=[1.0, 0.0])
    torch.testing.assert_close(restored.sum(0), torch.ones(SHAPE), atol=1e-5, rtol=0)
    assert dice(restored.argmax(0).numpy() == 1, data["mask"][0] == 1) > 0.95


def test_reorientation_round_trip_is_exact():
    affine = oblique_permuted_affine()
    assert nib.aff2axcodes(affine) == ("S", "L", "P")
    data = item(affine)
    out = VolumeGeometryd("RAS")(data)
    geometry = out["geometry"]
    oriented = geometry["oriented_affine"]
    assert nib.aff2axcodes(oriented) == ("R", "A", "S")
    assert tuple(geometry["oriented_shape"]) == (17, 9, 21) == out["image"].shape[1:]
    # The same voxels at the same world positions, rotation kept: only the axis order changed.
    np.testing.assert_allclose(spacing_of(oriented), (0.8, 2.5, 0.8), atol=1e-12)
    np.testing.assert_allclose(out["image"][0], ramp(world(oriented, out["image"].shape[1:])), atol=1e-4)
    back = restore_geometry(torch.as_tensor(out["image"]), geometry).numpy()
    np.testing.assert_array_equal(back, data["image"])
    labels = restore_geometry(one_hot(out["mask"][0], 2), geometry).argmax(0).numpy()
    np.testing.assert_array_equal(labels, data["mask"][0])


def test_crop_to_nonzero_round_trip_and_margin():
    data = item(np.diag([*SPACING, 1.0]))
    nonzero = np.zeros(SHAPE, bool)
    nonzero[4:15, 3:9, 2:7] = True
    data["image"] = np.where(nonzero, data["image"] + 50.0, 0.0).astype(np.float32)
    data["mask"] = (data["mask"] * nonzero)[None].astype(np.int64)[0]
    out = VolumeGeometryd("RAS", crop_nonzero=True, crop_margin=(2, 4, 1))(data)
    geometry = out["geometry"]
    np.testing.assert_array_equal(geometry["crop_start"], [2, 0, 1])  # y clamped at the edge
    np.testing.assert_array_equal(geometry["crop_stop"], [17, 13, 8])
    assert out["image"].shape == (1, 15, 13, 7) and out["mask"].shape == (1, 15, 13, 7)
    np.testing.assert_allclose(geometry["resampled_affine"][:3, 3], [1.6, 0.0, 2.5])
    back = restore_geometry(torch.as_tensor(out["image"]), geometry).numpy()
    np.testing.assert_array_equal(back, data["image"])
    labels = restore_geometry(one_hot(out["mask"][0], 2), geometry, fill=[1.0, 0.0]).argmax(0).numpy()
    np.testing.assert_array_equal(labels, data["mask"][0])

    blank = item(np.diag([*SPACING, 1.0]))
    blank["image"] = np.zeros_like(blank["image"])
    kept = VolumeGeometryd("RAS", crop_nonzero=True)(blank)  # nothing non-zero: nothing cropped
    assert kept["image"].shape == (1, *SHAPE)


def test_bad_geometry_settings_are_refused():
    for kwargs, message in (
        ({"orientation": "RAX"}, "orientation must name"),
        ({"orientation": "RRS"}, "orientation must name"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be"),
        ({"order": 7}, "order must be in 0..5"),
        ({"crop_margin": -1}, "crop_margin"),
    ):
        with pytest.raises(ValueError, match=message):
            VolumeGeometryd(**kwargs)
    with pytest.raises(ValueError, match="spacing must be 'median'"):
        VolumeDataModule(spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="not both"):
        VolumeDataModule(normalization="ct", ct_window=(-100, 100), ct_percentiles=(0.5, 99.5))
    with pytest.raises(ValueError, match="ct_percentiles must be"):
        VolumeDataModule(normalization="ct", ct_percentiles=(50, 10))


# ---- the DataModule: fingerprint, normalisation, batches ---------------------------------------------
def write_case(root: Path, name: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    write_volume(root / "images" / f"{name}.nii.gz", image, affine)
    write_label(root / "labels" / f"{name}.nii.gz", label, affine)


def test_median_spacing_comes_from_the_training_headers_along_ras_axes(tmp_path: Path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    spacings = {"a": (0.8, 0.8, 2.5), "b": (0.9, 0.7, 3.0), "c": (1.0, 0.6, 2.0), "held_out": (5.0, 5.0, 5.0)}
    for name, spacing in spacings.items():
        affine = np.diag([*spacing, 1.0])
        if name == "b":  # voxel axes along A (0.7 mm) then R (0.9 mm): its RAS spacing is (0.9, 0.7, 3.0)
            affine = affine[:, [1, 0, 2, 3]]
        image = rng.normal(0, 1, SHAPE).astype(np.float32)
        write_case(root, name, image, (image > 1).astype(np.uint8), affine)
    (root / "split.yaml").write_text(yaml.safe_dump({"train": ["a", "b", "c"], "val": ["held_out"]}))
    sitk.WriteImage(sitk.ReadImage(str(root / "images" / "b.nii.gz")), str(tmp_path / "b.nrrd"))
    shape, meta = read_geometry(tmp_path / "b.nrrd")
    assert shape == SHAPE
    np.testing.assert_allclose(meta.affine, read_volume(root / "images" / "b.nii.gz")[1].affine, atol=1e-5)

    dm = VolumeDataModule(root=str(root), split_file="split.yaml", num_workers=0)
    np.testing.assert_allclose(dm.dataset_statistics()["median_spacing"], (0.9, 0.7, 2.5), rtol=1e-6)
    voxel_order = VolumeDataModule(root=str(root), split_file="split.yaml", orientation=None)
    np.testing.assert_allclose(voxel_order.dataset_statistics()["median_spacing"], (0.8, 0.8, 2.5), rtol=1e-6)
    assert dm.plan().spacing == dm.dataset_statistics()["median_spacing"]
    assert yaml.safe_load(yaml.safe_dump(dm.preprocessing_signature())) == dm.preprocessing_signature()
    dm.setup("validate")
    sample = dm.datasets["val"][0]
    np.testing.assert_allclose(spacing_of(sample["geometry"]["resampled_affine"]), (0.9, 0.7, 2.5), atol=1e-6)
    assert VolumeDataModule(root=str(root), spacing=None).dataset_statistics() == {}


def ct_dataset(root: Path) -> dict[str, np.ndarray]:
    """Three CT-like cases: air around a body; the label marks 600 foreground voxels per case."""
    rng = np.random.default_rng(1)
    images = {}
    for i in range(3):
        image = np.full(SHAPE, -1000.0, np.float32) + rng.normal(0, 5, SHAPE).astype(np.float32)
        label = np.zeros(SHAPE, np.uint8)
        label[5:15, 4:10, 2:7] = 1 + (i % 2)
        image[label > 0] = rng.normal(40, 300, int((label > 0).sum()))
        write_case(root, f"ct{i}", image, label, np.diag([*SPACING, 1.0]))
        images[f"ct{i}"] = image
    (root / "split.yaml").write_text(yaml.safe_dump({"train": ["ct0", "ct1"], "val": ["ct2"]}))
    return images


def test_ct_percentile_normalisation_uses_the_training_foreground(tmp_path: Path):
    root = tmp_path / "ct"
    images = ct_dataset(root)
    dm = VolumeDataModule(
        root=str(root),
        split_file="split.yaml",
        spacing=None,
        normalization="ct",
        ct_percentiles=(0.5, 99.5),
        ct_statistics="dataset",
        num_workers=0,
    )
    foreground = np.concatenate([images[n][5:15, 4:10, 2:7].ravel() for n in ("ct0", "ct1")]).astype(np.float64)
    lo, hi = np.percentile(foreground, [0.5, 99.5])  # fewer than 10000 voxels per case: all of them
    clipped = np.clip(foreground, lo, hi)
    stats = dm.dataset_statistics()
    np.testing.assert_allclose(stats["ct_clip"], [[lo, hi]], rtol=1e-6)
    np.testing.assert_allclose(stats["ct_mean"], [clipped.mean()], rtol=1e-6)
    np.testing.assert_allclose(stats["ct_std"], [clipped.std()], rtol=1e-6)
    assert dm.plan().intensity_statistics == stats

    dm.setup("validate")
    sample = dm.datasets["val"][0]["image"].numpy()[0]  # ct2: not part of the statistics
    expected = (np.clip(images["ct2"], lo, hi) - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(sample, expected, atol=1e-4)
    assert sample.min() == pytest.approx((lo - clipped.mean()) / clipped.std(), abs=1e-4)  # air is clipped


def test_ct_per_volume_percentiles_and_fixed_window(tmp_path: Path):
    root = tmp_path / "ct"
    images = ct_dataset(root)
    per_volume = VolumeDataModule(
        root=str(root), split_file="split.yaml", spacing=None, normalization="ct", ct_percentiles=(1, 99), num_workers=0
    )
    per_volume.setup("validate")
    sample = per_volume.datasets["val"][0]["image"].numpy()[0]
    lo, hi = np.percentile(images["ct2"], [1, 99])
    clipped = np.clip(images["ct2"], lo, hi)
    np.testing.assert_allclose(sample, (clipped - clipped.mean()) / clipped.std(), atol=1e-4)

    fixed = VolumeDataModule(
        root=str(root),
        split_file="split.yaml",
        spacing=None,
        normalization="ct",
        ct_window=(-200, 300),
        ct_mean=50.0,
        ct_std=100.0,
        num_workers=0,
    )
    fixed.setup("validate")
    sample = fixed.datasets["val"][0]["image"].numpy()[0]
    np.testing.assert_allclose(sample, (np.clip(images["ct2"], -200, 300) - 50) / 100, atol=1e-4)
    assert fixed.dataset_statistics() == {}  # nothing computed from the training set


def test_clip_intensity_takes_one_window_per_channel():
    image = np.stack([np.linspace(-5, 5, 11), np.linspace(-5, 5, 11)]).reshape(2, 11, 1, 1).astype(np.float32)
    out = ClipIntensityd("image", [-1, -3], [2, 4])({"image": image})["image"]
    assert (out[0].min(), out[0].max(), out[1].min(), out[1].max()) == (-1, 2, -3, 4)


def test_validation_batches_carry_the_geometry_records_and_the_spacing(tmp_path: Path):
    root = tmp_path / "data"
    rng = np.random.default_rng(2)
    for name in ("a", "b", "c"):
        image = rng.normal(0, 1, SHAPE).astype(np.float32)
        write_case(root, name, image, (image > 1).astype(np.uint8), LPS)
    (root / "split.yaml").write_text(yaml.safe_dump({"train": ["a", "b"], "val": ["c"]}))
    dm = VolumeDataModule(root=str(root), split_file="split.yaml", patch_size=(8, 8, 8), batch_size=1, num_workers=0)
    dm.setup("fit")
    [batch] = list(dm.val_dataloader())
    [record] = batch["geometry"]
    assert record["source"] == str(root / "images" / "c.nii.gz")
    np.testing.assert_allclose(record["affine"], LPS, atol=1e-6)
    assert isinstance(record["affine"], np.ndarray)  # not collated into a tensor: stays on the host
    torch.testing.assert_close(batch["spacing"], torch.tensor([SPACING], dtype=torch.float32))
    train = next(iter(dm.train_dataloader()))
    assert "geometry" not in train and train["image"].shape == (4, 1, 8, 8, 8)


def test_dataset_statistics_without_training_cases_name_the_setting(tmp_path: Path):
    write_volume(tmp_path / "new" / "case_0000.nii.gz", np.ones(SHAPE, np.float32), LPS)
    folders = {"root": str(tmp_path), "layout": "nnunet", "predict_dir": str(tmp_path / "new"), "num_workers": 0}
    expected = r"imagesTr: folder does not exist \(the training cases are needed for spacing: median\)"
    with pytest.raises(DataError, match=expected):
        VolumeDataModule(**folders).setup("predict")
    explicit = VolumeDataModule(**folders, spacing=(1, 1, 2))
    explicit.setup("predict")
    assert explicit.datasets["predict"][0]["image"].shape == (1, 17, 14, 11)
