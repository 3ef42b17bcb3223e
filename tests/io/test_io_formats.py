"""Volume readers: every format through one read_volume/read_label with the same geometry; DICOM series;
refusals of broken files as one-line DataErrors naming the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from corpus import AFFINE, SHAPE, png_bomb, tiff_bomb, volume_case, write_dicom_series

from segpipe.errors import DataError
from segpipe.io.images import read_image, read_mask
from segpipe.io.volumes import is_dicom_series, read_label, read_volume, volume_name, write_label, write_volume

# LPS geometry of the DICOM test series: in-plane axes swapped, slices towards -z.
DICOM_SPACING = (0.7, 0.9, 2.5)
DICOM_ORIGIN = (10.0, -20.0, 30.0)
DICOM_DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def dicom_affine() -> np.ndarray:
    """The RAS affine of the DICOM test series: LPS direction x spacing, origin, with x and y negated."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(DICOM_DIRECTION).reshape(3, 3) * DICOM_SPACING
    lps[:3, 3] = DICOM_ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_dicom_series_reads_with_its_ras_affine_and_spacing(tmp_path: Path):
    volume = np.arange(7 * 9 * 5, dtype=np.int16).reshape(7, 9, 5) - 100
    folder = write_dicom_series(tmp_path / "ct", volume, DICOM_SPACING, DICOM_ORIGIN, DICOM_DIRECTION)
    assert is_dicom_series(folder) and not is_dicom_series(tmp_path) and volume_name(folder) == "ct"

    image, meta = read_volume(folder)
    assert image.shape == (1, 7, 9, 5) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], volume)
    np.testing.assert_allclose(meta.affine, dicom_affine(), atol=1e-6)
    assert meta.spacing == pytest.approx(DICOM_SPACING)
    # voxel (i, j, k) lies where SimpleITK puts it, converted from LPS to RAS
    itk = sitk.ReadImage(sorted(str(p) for p in folder.iterdir()))
    x, y, z = itk.TransformIndexToPhysicalPoint((3, 2, 4))
    np.testing.assert_allclose(meta.affine @ [3, 2, 4, 1], [-x, -y, z, 1], atol=1e-6)

    label, label_meta = read_label(folder)
    np.testing.assert_array_equal(label, volume)
    np.testing.assert_allclose(label_meta.affine, meta.affine)


def test_dicom_slices_are_ordered_by_position_not_by_file_name(tmp_path: Path):
    volume = np.arange(7 * 9 * 4, dtype=np.int16).reshape(7, 9, 4)
    folder = write_dicom_series(tmp_path / "ct", volume)
    names = sorted(folder.iterdir())
    for path, new in zip(names, reversed(names), strict=True):  # reverse the name order
        path.rename(path.with_name(f"x{new.name}"))
    np.testing.assert_array_equal(read_volume(folder)[0][0], volume)


def test_folder_with_two_dicom_series_is_refused_with_both_uids(tmp_path: Path):
    folder = tmp_path / "mixed"
    write_dicom_series(folder / "a", np.zeros((7, 9, 3), np.int16), series_uid="1.2.3.1")
    write_dicom_series(folder / "b", np.ones((7, 9, 4), np.int16), series_uid="1.2.3.2")
    for path in (folder / "b").iterdir():
        path.rename(folder / f"b_{path.name}")
    for path in (folder / "a").iterdir():
        path.rename(folder / f"a_{path.name}")
    with pytest.raises(DataError, match=r"holds 2 DICOM series \(1\.2\.3\.1 \(3 slices\), 1\.2\.3\.2 \(4 slices\)\)"):
        read_volume(folder)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path):
    folder = write_dicom_series(tmp_path / "ct", np.zeros((7, 9, 5), np.int16))
    (folder / "slice_002.dcm").unlink()
    with pytest.raises(DataError, match="not evenly spaced") as err:
        read_volume(folder)
    assert err.value.path == folder and "\n" not in str(err.value)


def test_folder_without_dicom_is_refused(tmp_path: Path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="folder without a DICOM series"):
        read_volume(tmp_path / "notes")


@pytest.mark.parametrize("fmt", ["nii", "nii.gz", "nrrd", "mha", "mhd", "npz", "dicom"])
def test_every_format_reads_through_read_volume_with_the_same_geometry(tmp_path: Path, fmt: str):
    rng = np.random.default_rng(0)
    image, label = volume_case(rng)
    image = np.round(image).astype(np.int16)  # DICOM stores integers
    write_volume(tmp_path / "ref.nii.gz", image, AFFINE)
    write_label(tmp_path / "ref_label.nii.gz", label, AFFINE)
    if fmt in ("nii", "nii.gz"):
        write_volume(tmp_path / f"img.{fmt}", image, AFFINE)
        write_label(tmp_path / f"lab.{fmt}", label, AFFINE)
        paths = tmp_path / f"img.{fmt}", tmp_path / f"lab.{fmt}"
    elif fmt == "npz":
        np.savez(tmp_path / "img.npz", image=image, affine=AFFINE)
        np.savez(tmp_path / "lab.npz", label=label, affine=AFFINE)
        paths = tmp_path / "img.npz", tmp_path / "lab.npz"
    elif fmt == "dicom":
        # RAS affine -> LPS direction/spacing/origin for SimpleITK
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = tuple((lps[:3, :3] / spacing).ravel())
        write_dicom_series(tmp_path / "img", image, tuple(spacing), tuple(lps[:3, 3]), direction, "1.2.3.4")
        write_dicom_series(tmp_path / "lab", label, tuple(spacing), tuple(lps[:3, 3]), direction, "1.2.3.5")
        paths = tmp_path / "img", tmp_path / "lab"
    else:
        sitk.WriteImage(sitk.ReadImage(str(tmp_path / "ref.nii.gz")), str(tmp_path / f"img.{fmt}"))
        sitk.WriteImage(sitk.ReadImage(str(tmp_path / "ref_label.nii.gz")), str(tmp_path / f"lab.{fmt}"))
        paths = tmp_path / f"img.{fmt}", tmp_path / f"lab.{fmt}"

    array, meta = read_volume(paths[0])
    np.testing.assert_array_equal(array, image[None].astype(np.float32))
    np.testing.assert_allclose(meta.affine, AFFINE, atol=1e-4)
    assert meta.spacing == pytest.approx((0.8, 1.2, 2.5), abs=1e-5)
    mask, mask_meta = read_label(paths[1])
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, label)
    np.testing.assert_allclose(mask_meta.affine, AFFINE, atol=1e-4)


def _broken(tmp_path: Path, kind: str) -> tuple[Path, str]:
    image, _ = volume_case(np.random.default_rng(1), (40, 40, 40))
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "truncated gzip":
        write_volume(path, image, AFFINE)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, r"cannot be read as a \.nii\.gz volume: truncated \(the gzip stream ends early\)"
    if kind == "text named nii.gz":
        path.write_text("patient,age\n1,40\n")
        return path, "not gzip-compressed"
    if kind == "gzip of text":
        path.write_bytes(gzip.compress(b"hello " * 200))
        return path, r"no NIfTI header"
    if kind == "truncated nii":
        path = tmp_path / "short.nii"
        write_volume(path, image, AFFINE)
        path.write_bytes(path.read_bytes()[:1000])
        return path, r"truncated \(header needs 256352 bytes, file has 1000\)"
    if kind == "zero bytes":
        path.write_bytes(b"")
        return path, r"file is empty \(0 bytes\)"
    if kind == "directory":
        path.mkdir()
        return path, r"is a folder, expected a \.nii\.gz file"
    if kind == "dangling link":
        path.symlink_to(tmp_path / "gone.nii.gz")
        return path, r"does not exist \(dangling link\?\)"
    if kind == "header bomb":
        header = nib.Nifti1Header()
        header.set_data_shape((2000, 2000, 2000))
        header.set_data_dtype(np.float32)
        path = tmp_path / "bomb.nii"
        path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
        return path, r"header claims shape \(2000, 2000, 2000\)"
    if kind == "4D mha":
        path = tmp_path / "t.mha"
        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(image)] * 3), str(path))
        return path, r"expected a 3D image, got a 4D one"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated gzip",
        "text named nii.gz",
        "gzip of text",
        "truncated nii",
        "zero bytes",
        "directory",
        "dangling link",
        "header bomb",
        "4D mha",
    ],
)
def test_broken_volume_files_are_one_line_errors_naming_the_file(tmp_path: Path, kind: str):
    path, message = _broken(tmp_path, kind)
    with pytest.raises(DataError, match=message) as err:
        read_volume(path)
    assert err.value.path == path and "\n" not in str(err.value) and str(path) in str(err.value)
    assert str(err.value).count(str(path)) == 1  # the library's own copy of the path is dropped


def test_4d_nifti_is_channels_for_images_and_refused_for_labels(tmp_path: Path):
    image, _ = volume_case(np.random.default_rng(2))
    series = np.stack([image + t for t in range(5)], axis=-1)  # (X, Y, Z, T) as stored
    nib.save(nib.Nifti1Image(series, AFFINE), tmp_path / "fmri.nii.gz")
    array, _ = read_volume(tmp_path / "fmri.nii.gz")
    assert array.shape == (5, *SHAPE)
    with pytest.raises(DataError, match=r"must be 3D \(X, Y, Z\) with one channel, got shape \(5, 13, 11, 9\)"):
        read_label(tmp_path / "fmri.nii.gz")


@pytest.mark.parametrize("writer", [png_bomb, tiff_bomb])
def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path, writer):
    path = writer(tmp_path / f"bomb{'.png' if writer is png_bomb else '.tif'}")
    assert path.stat().st_size < 500
    with pytest.raises(DataError, match="decompression bomb") as err:
        read_image(path)
    assert err.value.path == path
    with pytest.raises(DataError, match="decompression bomb"):
        read_mask(path)


def test_2d_reader_errors_name_the_file_once(tmp_path: Path):
    (tmp_path / "scan.png").write_bytes(gzip.compress(b"\0" * 400))  # a NIfTI-like blob named .png
    (tmp_path / "dir.png").mkdir()
    for name, message in (("scan.png", "cannot be decoded as an image"), ("dir.png", "is a folder")):
        with pytest.raises(DataError, match=message) as err:
            read_image(tmp_path / name)
        assert str(err.value).count(str(tmp_path / name)) == 1


def test_tiff_stacks_are_refused_and_planar_rgb_is_channels_last(tmp_path: Path):
    rgb = np.random.default_rng(3).integers(0, 255, (3, 37, 33), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 37, 33), np.uint16))
    with pytest.raises(DataError, match=r"is a TIFF stack \(shape \(5, 37, 33\), axes QYX\); expected one 2D image"):
        read_image(tmp_path / "stack.tif")
