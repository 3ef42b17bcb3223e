"""3D volumes: readers/writers, layouts, splits, patch sampling, data checks, CLI fit and the 3D demo."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from builders import AFFINE, SHAPE, blob_case, tiny_3d_config, write_volumes

from segpipe.cli import main
from segpipe.data import MNIDemo3DDataModule, VolumeDataModule
from segpipe.data.demos.mni2d import _load_template, mni_labels
from segpipe.data.demos.mni3d import build_mni_demo3d, template_affine
from segpipe.data.splits import split_names
from segpipe.errors import DataError
from segpipe.io.volumes import read_label, read_volume, write_label, write_volume


# ---- io3d ------------------------------------------------------------------------------------------
def test_nifti_round_trip_keeps_values_affine_and_spacing(tmp_path: Path):
    image, label = blob_case(np.random.default_rng(1))
    two_channels = np.stack([image, -image])
    write_volume(tmp_path / "img.nii.gz", two_channels, AFFINE)
    write_label(tmp_path / "lab.nii", label, AFFINE)

    array, meta = read_volume(tmp_path / "img.nii.gz")
    assert array.shape == (2, *SHAPE) and array.dtype == np.float32
    np.testing.assert_array_equal(array, two_channels)
    np.testing.assert_allclose(meta.affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(meta.spacing, (0.8, 1.2, 2.5), atol=1e-5)

    mask, label_meta = read_label(tmp_path / "lab.nii")
    assert mask.dtype == np.int64 and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, label)
    np.testing.assert_allclose(label_meta.affine, AFFINE, atol=1e-5)
    assert not list(tmp_path.glob(".*tmp*")), "the atomic write left its temporary file behind"


def test_nrrd_and_mha_read_like_the_same_nifti(tmp_path: Path):
    image, label = blob_case(np.random.default_rng(2))
    write_volume(tmp_path / "img.nii.gz", image, AFFINE)
    write_label(tmp_path / "lab.nii.gz", label, AFFINE)
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "img.nii.gz")), str(tmp_path / "img.nrrd"))
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "lab.nii.gz")), str(tmp_path / "lab.mha"))

    from_nifti, nifti_meta = read_volume(tmp_path / "img.nii.gz")
    from_nrrd, nrrd_meta = read_volume(tmp_path / "img.nrrd")
    np.testing.assert_array_equal(from_nrrd, from_nifti)
    np.testing.assert_allclose(nrrd_meta.affine, nifti_meta.affine, atol=1e-4)
    np.testing.assert_allclose(nrrd_meta.spacing, (0.8, 1.2, 2.5), atol=1e-5)
    mask, mha_meta = read_label(tmp_path / "lab.mha")
    np.testing.assert_array_equal(mask, label)
    np.testing.assert_allclose(mha_meta.affine, AFFINE, atol=1e-4)


def test_itk_geometry_is_converted_from_lps_to_ras(tmp_path: Path):
    volume = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    itk = sitk.GetImageFromArray(volume.transpose(2, 1, 0))  # SimpleITK arrays are (Z, Y, X)
    itk.SetSpacing((0.5, 0.75, 3.0))
    itk.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(itk, str(tmp_path / "v.nrrd"))
    array, meta = read_volume(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(array[0], volume)
    expected = np.diag([-0.5, -0.75, 3.0, 1.0])
    expected[:3, 3] = (-10.0, -20.0, 30.0)
    np.testing.assert_allclose(meta.affine, expected)
    assert meta.spacing == pytest.approx((0.5, 0.75, 3.0))


def test_numpy_volumes_round_trip(tmp_path: Path):
    image, label = blob_case(np.random.default_rng(3))
    np.save(tmp_path / "img.npy", image)
    np.savez(tmp_path / "two.npz", data=np.stack([image, image + 1]), affine=AFFINE)
    np.save(tmp_path / "lab.npy", label)
    array, meta = read_volume(tmp_path / "img.npy")
    np.testing.assert_array_equal(array, image[None])
    np.testing.assert_array_equal(meta.affine, np.eye(4))
    two, two_meta = read_volume(tmp_path / "two.npz")
    assert two.shape == (2, *SHAPE) and two[1, 0, 0, 0] == image[0, 0, 0] + 1
    np.testing.assert_array_equal(two_meta.affine, AFFINE)
    np.testing.assert_array_equal(read_label(tmp_path / "lab.npy")[0], label)


def test_bad_volume_files_are_refused_with_their_name(tmp_path: Path):
    image, _ = blob_case(np.random.default_rng(4))
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    write_volume(tmp_path / "full.nii.gz", image, AFFINE)
    data = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.nrrd").write_bytes(b"this is not an NRRD header\n")
    np.save(tmp_path / "flat.npy", np.zeros((5, 5), np.float32))
    nan = image.copy()
    nan[3, 4, 5] = np.nan
    write_volume(tmp_path / "nan.nii.gz", nan, AFFINE)
    write_volume(tmp_path / "fraction.nii.gz", np.full(SHAPE, 0.5, np.float32), AFFINE)
    cases = [
        (read_volume, "empty.nii.gz", "empty"),
        (read_volume, "truncated.nii.gz", "cannot be read"),
        (read_volume, "junk.nrrd", "cannot be read"),
        (read_volume, "flat.npy", "expected a 3D volume"),
        (read_volume, "nan.nii.gz", "NaN or Inf"),
        (read_volume, "missing.nii.gz", "does not exist"),
        (read_label, "fraction.nii.gz", "non-integer"),
    ]
    for reader, name, problem in cases:
        with pytest.raises(DataError, match=problem) as err:
            reader(tmp_path / name)
        assert err.value.path == tmp_path / name
        assert "\n" not in str(err.value)


# ---- layouts, splits, sampling ---------------------------------------------------------------------
def test_nnunet_layout_groups_channel_files_into_cases(tmp_path: Path):
    rng = np.random.default_rng(5)
    root = tmp_path / "Dataset001"
    for i in range(4):
        image, label = blob_case(rng)
        for channel in range(2):
            write_volume(root / "imagesTr" / f"brain_{i:03d}_{channel:04d}.nii.gz", image * (channel + 1), AFFINE)
            write_volume(root / "imagesTs" / f"new_{i:03d}_{channel:04d}.nii.gz", image, AFFINE)
        write_label(root / "labelsTr" / f"brain_{i:03d}.nii.gz", label, AFFINE)

    dm = VolumeDataModule(root=str(root), val_fraction=0.25, num_workers=0)
    assert dm.resolved_layout() == "nnunet"
    cases = [c for split in dm.cases().values() for c in split]
    assert sorted(c.name for c in cases) == [f"brain_{i:03d}" for i in range(4)]
    assert all([p.name for p in c.images] == [f"{c.name}_0000.nii.gz", f"{c.name}_0001.nii.gz"] for c in cases)
    assert dm.check(num_classes=3, in_channels=2) == []
    [problem, *_] = dm.check(num_classes=3, in_channels=1)
    assert "2 channels" in problem.problem and problem.path.name.endswith("_0000.nii.gz")

    dm.setup("validate")
    sample = dm.datasets["val"][0]
    # Reoriented to RAS (the default): AFFINE's voxel axes are A, L, S, so X and Y swap places.
    assert sample["image"].shape == (2, SHAPE[1], SHAPE[0], SHAPE[2]) and sample["image"].dtype == torch.float32
    # z-scored per channel: channel 1 (2x channel 0) normalises to the same values.
    torch.testing.assert_close(sample["image"][0], sample["image"][1], atol=1e-4, rtol=0)
    assert sorted(c.name for c in dm.predict_cases()) == [f"new_{i:03d}" for i in range(4)]
    assert all(len(c.images) == 2 for c in dm.predict_cases())


def test_k_folds_cover_every_case_once_as_val_and_keep_the_test_split_fixed():
    names = [f"case_{i:02d}" for i in range(23)]
    folds = [split_names(names, 0.2, 0.2, seed=7, fold=k, num_folds=5) for k in range(5)]
    test = folds[0]["test"]
    assert len(test) == round(23 * 0.2) and all(f["test"] == test for f in folds)
    vals = [name for f in folds for name in f["val"]]
    assert sorted(vals) == sorted(set(names) - set(test))  # each non-test case exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and not set(f["train"]) & set(test)
        assert sorted(f["train"] + f["val"] + f["test"]) == names
    assert split_names(names, 0.2, 0.2, seed=7, fold=2) == folds[2]  # seeded: reproducible


def test_fold_of_the_datamodule_is_its_val_split(tmp_path: Path):
    root = write_volumes(tmp_path / "data", n=5, labels_dir="masks")
    vals = [VolumeDataModule(root=str(root), fold=k, num_folds=5).cases()["val"] for k in range(5)]
    assert sorted(c.name for v in vals for c in v) == [f"case_{i:02d}" for i in range(5)]


def test_foreground_fraction_one_puts_foreground_in_every_patch(tmp_path: Path):
    root = tmp_path / "data"
    image = np.random.default_rng(6).normal(0, 1, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[17:19, 3:5, 11:13] = 1  # 8 foreground voxels of 7680
    for i in range(3):
        write_volume(root / "images" / f"v{i}.nii.gz", image, AFFINE)
        write_label(root / "labels" / f"v{i}.nii.gz", label, AFFINE)

    def patches(fraction: float) -> list[torch.Tensor]:
        dm = VolumeDataModule(
            root=str(root),
            split_file="split.yaml",
            patch_size=(8, 8, 8),
            samples_per_volume=4,
            foreground_fraction=fraction,
            batch_size=1,
            num_workers=0,
            cache=True,
        )
        dm.setup("fit")
        torch.manual_seed(0)
        batches = [b for _ in range(5) for b in dm.train_dataloader()]
        assert all(b["image"].shape == (4, 1, 8, 8, 8) and b["mask"].shape == (4, 8, 8, 8) for b in batches)
        return [m for b in batches for m in b["mask"]]

    (root / "split.yaml").write_text(yaml.safe_dump({"train": ["v0", "v1"], "val": ["v2"]}))
    assert all(bool((m > 0).any()) for m in patches(1.0))
    background_only = [m for m in patches(0.0) if not (m > 0).any()]
    assert len(background_only) > 25  # of 40: without oversampling the blob is rarely hit


# ---- check() ---------------------------------------------------------------------------------------
def _break(root: Path, problem: str) -> tuple[str, str]:
    """Introduce ``problem`` into a valid dataset; returns (file name expected in the error, message)."""
    image, label = blob_case(np.random.default_rng(9))
    if problem == "label out of range":
        write_label(root / "labels" / "case_02.nii.gz", np.where(label == 2, 5, label), AFFINE)
        return "case_02.nii.gz", r"labels \[5\] are outside the 3 classes"
    if problem == "shape mismatch":
        write_label(root / "labels" / "case_01.nii.gz", label[:, :, :-1], AFFINE)
        return "case_01.nii.gz", r"label shape \(24, 20, 15\) differs from image shape \(24, 20, 16\)"
    if problem == "affine mismatch":
        shifted = AFFINE.copy()
        shifted[2, 2] = 3.0
        write_label(root / "labels" / "case_03.nii.gz", label, shifted)
        return "case_03.nii.gz", r"affine differs from image case_03.nii.gz \(spacing \(0.8, 1.2, 3.0\) vs"
    if problem == "NaN intensities":
        image[0, 0, 0] = np.inf
        write_volume(root / "images" / "case_04.nii.gz", image, AFFINE)
        return "case_04.nii.gz", "NaN or Inf"
    if problem == "unpaired file":
        write_volume(root / "images" / "lonely.nii.gz", image, AFFINE)
        return "lonely.nii.gz", "has no label in"
    if problem == "empty folder":
        for path in (root / "images").iterdir():
            path.unlink()
        return "images", "holds no volumes"
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem",
    ["label out of range", "shape mismatch", "affine mismatch", "NaN intensities", "unpaired file", "empty folder"],
)
def test_check_names_the_file_and_the_problem(tmp_path: Path, problem: str):
    root = write_volumes(tmp_path / "data", n=6)
    dm = VolumeDataModule(root=str(root), val_fraction=0.34, num_workers=0)
    assert dm.check(num_classes=3, in_channels=1) == []
    name, message = _break(root, problem)
    problems = dm.check(num_classes=3, in_channels=1)
    assert len(problems) == 1
    assert problems[0].path.name == name
    assert re.search(message, problems[0].problem), problems[0].problem
    with pytest.raises(DataError, match=name):
        dm.validate(num_classes=3, in_channels=1)


# ---- the CLI ---------------------------------------------------------------------------------------


def test_fit_validate_and_test_a_3d_unet_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_volumes(tmp_path / "data", n=8)
    config = tmp_path / "tiny3d.yaml"
    config.write_text(yaml.safe_dump(tiny_3d_config(data)))

    assert main(["fit", "--config", str(config)]) == 0
    checkpoints = sorted(Path("outputs").rglob("*.ckpt"))
    best = next(c for c in checkpoints if c.name.startswith("best-epoch"))
    assert "last.ckpt" in [c.name for c in checkpoints]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["tests3d"], output_format="list")
    assert 0.0 <= run.data.metrics["val/dice"] <= 1.0
    assert run.data.tags["spatial_dims"] == "3"
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/dice")) == 2

    assert main(["validate", "--config", str(config), "--ckpt_path", str(best)]) == 0
    assert main(["test", "--config", str(config), "--ckpt_path", str(best)]) == 0
    runs = mlflow.search_runs(experiment_names=["tests3d"], output_format="list")
    assert any("test/dice_pooled" in r.data.metrics for r in runs)


def test_bad_3d_data_is_refused_by_the_cli_with_exit_2(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_volumes(tmp_path / "data", n=8)
    full = (data / "labels" / "case_05.nii.gz").read_bytes()
    (data / "labels" / "case_05.nii.gz").write_bytes(gzip.compress(gzip.decompress(full)[:400]))
    config = tmp_path / "tiny3d.yaml"
    config.write_text(yaml.safe_dump(tiny_3d_config(data)))
    assert main(["fit", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "case_05.nii.gz" in error and "cannot be read" in error
    assert not (tmp_path / "outputs").exists()


# ---- the 3D demo -----------------------------------------------------------------------------------
def test_mni_demo3d_slabs_are_disjoint_consistent_and_placed_in_mni_space(tmp_path: Path):
    root = tmp_path / "demo3d"
    splits = build_mni_demo3d(root)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    info = yaml.safe_load((root / "demo.yaml").read_text())
    z_of = {name: set(range(z0, z1 + 1)) for name, (z0, z1) in info["slab_z_ranges"].items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        slices_a = set().union(*(z_of[n] for n in splits[a]))
        slices_b = set().union(*(z_of[n] for n in splits[b]))
        gap = min(abs(za - zb) for za in slices_a for zb in slices_b)
        assert gap > 2, f"{a} and {b} are only {gap} slices apart"

    t1 = _load_template("t1").astype(np.float64)
    gm = _load_template("gm").astype(np.float32) / 255.0
    wm = _load_template("wm").astype(np.float32) / 255.0
    source = np.linalg.inv(template_affine())
    classes: set[int] = set()
    for name in splits["val"] + splits["train"]:
        image, meta = read_volume(root / "images" / f"{name}.nii.gz")
        label, label_meta = read_label(root / "labels" / f"{name}.nii.gz")
        assert image.shape[1:] == label.shape == (72, 90, len(z_of[name]))
        np.testing.assert_allclose(label_meta.affine, meta.affine, atol=1e-5)
        assert meta.spacing == pytest.approx((2.0, 2.0, 1.0))
        classes |= set(np.unique(label).tolist())
        # Voxel (i, j, k) is the mean of the 2x2 template block its affine points at.
        for i, j, k in ((0, 0, 0), (40, 51, 3), (71, 89, label.shape[2] - 1)):
            x, y, z = (source @ meta.affine @ [i, j, k, 1])[:3]
            x0, y0, z0 = int(x - 0.5), int(y - 0.5), round(z)
            assert (x - x0, y - y0) == pytest.approx((0.5, 0.5))
            assert image[0, i, j, k] == pytest.approx(t1[x0 : x0 + 2, y0 : y0 + 2, z0].mean(), abs=1e-3)
            block = (slice(x0, x0 + 2), slice(y0, y0 + 2), slice(z0, z0 + 1))
            expected = mni_labels(gm[block].mean((0, 1))[None, None], wm[block].mean((0, 1))[None, None])
            assert label[i, j, k] == expected[0, 0, 0]
    assert classes == {0, 1, 2}

    dm = MNIDemo3DDataModule(root=str(root), patch_size=(32, 32, 8), num_workers=0)
    dm.prepare_data()  # already built: a no-op
    assert dm.check(num_classes=3, in_channels=1) == []
    assert {s: [c.name for c in cases] for s, cases in dm.cases().items()} == splits
