"""Readers and writers for 3D volumes and label volumes: NIfTI, NRRD/MHA/MHD and NumPy files.

Shape contract: volumes are returned as (C, X, Y, Z) float32 and labels as (X, Y, Z) int64, indexed like
nibabel's data arrays (i along the first axis). Every reader also returns a :class:`VolumeMeta` whose
``affine`` maps voxel indices (i, j, k) to RAS+ millimetres, the NIfTI convention; SimpleITK's LPS+
geometry is converted, so that an image in one format and its label in another can be compared.

Channel conventions: a 4D NIfTI or a vector-valued NRRD/MHA stores channels last (X, Y, Z, C); a 4D
``.npy``/``.npz`` array is channel-first (C, X, Y, Z). NumPy files carry no geometry: their affine is the
identity (1 mm voxels), unless an ``.npz`` holds a 4x4 array named ``affine`` beside the data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from segpipe.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
NUMPY_SUFFIXES = (".npy", ".npz")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + NUMPY_SUFFIXES

# SimpleITK reports LPS+ world coordinates, NIfTI/nibabel RAS+: the x and y axes are flipped.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class VolumeMeta:
    """Geometry of a volume: ``affine`` (4, 4) voxel index -> RAS+ mm, and voxel ``spacing`` (3,) in mm."""

    affine: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> VolumeMeta:
        """Meta for ``affine`` (4, 4), with the spacing taken from its column norms."""
        affine = np.asarray(affine, np.float64)
        spacing = tuple(float(s) for s in nib.affines.voxel_sizes(affine))
        return cls(affine, spacing)  # type: ignore[arg-type]


def volume_suffix(path: str | Path) -> str | None:
    """The volume suffix ``path`` ends with (``.nii.gz`` counts as one), or None."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def volume_name(path: str | Path) -> str:
    """The file name without its volume suffix: ``case_01.nii.gz`` -> ``case_01``."""
    path = Path(path)
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def _check_file(path: Path) -> str:
    if not path.exists():
        raise DataError(path, "file does not exist (dangling link?)" if path.is_symlink() else "file does not exist")
    if not path.is_file():
        raise DataError(path, "is not a regular file")
    suffix = volume_suffix(path)
    if suffix is None:
        raise DataError(path, f"unsupported volume format; use one of {', '.join(VOLUME_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    return suffix


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    # dataobj applies scl_slope/scl_inter; integer labels without scaling keep their integer type.
    array = np.asanyarray(image.dataobj)
    if array.ndim == 5 and array.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI vector intent
        array = array[:, :, :, 0]
    if array.ndim == 4:
        array = np.moveaxis(array, -1, 0)
    return array, np.asarray(image.affine, np.float64)


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise DataError(path, f"expected a 3D image, got a {image.GetDimension()}D one")
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X) or (Z, Y, X, C)
    array = array.transpose(3, 2, 1, 0) if array.ndim == 4 else array.transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), np.float64)
    lps[:3, 3] = image.GetOrigin()
    return array, _LPS_TO_RAS @ lps


def _read_numpy(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), np.eye(4)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    affine = arrays.pop("affine", np.eye(4))
    if len(arrays) != 1:
        raise DataError(path, f"an .npz volume must hold one array (plus 'affine'), found {sorted(arrays) or 'none'}")
    if np.shape(affine) != (4, 4):
        raise DataError(path, f"'affine' must be a 4x4 array, got shape {np.shape(affine)}")
    return next(iter(arrays.values())), np.asarray(affine, np.float64)


def _reason(err: Exception) -> str:
    """One line for the user: SimpleITK's multi-line messages are cut to the text after ``ERROR:``."""
    text = " ".join(str(err).split())
    if "ERROR:" in text:
        return text.rsplit("ERROR:", 1)[1].strip()
    return f"{type(err).__name__}: {text}"


def _read_raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array as (X, Y, Z) or (C, X, Y, Z) and its affine, in the stored dtype."""
    suffix = _check_file(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            array, affine = _read_nifti(path)
        elif suffix in ITK_SUFFIXES:
            array, affine = _read_itk(path)
        else:
            array, affine = _read_numpy(path, suffix)
    except DataError:
        raise
    except Exception as err:
        raise DataError(path, f"cannot be read as a {suffix} volume ({_reason(err)})") from None
    array = np.asarray(array)
    if array.size == 0:
        raise DataError(path, f"volume is empty (shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(path, f"unsupported voxel type {array.dtype}")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "has an invalid affine (singular or non-finite voxel-to-world matrix)")
    return array, affine


def read_volume(path: str | Path) -> tuple[np.ndarray, VolumeMeta]:
    """Read an image volume as (C, X, Y, Z) float32 (C=1 for a 3D file) and its geometry.

    Raises:
        DataError: naming ``path``, when the file is missing, empty, unreadable or truncated, is not 3D
            (or 4D with channels), or holds NaN or Inf values.
    """
    path = Path(path)
    array, affine = _read_raw(path)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise DataError(path, f"expected a 3D volume (X, Y, Z) or one with channels, got shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DataError(path, "volume contains NaN or Inf values")
    return array, VolumeMeta.from_affine(affine)


def read_label(path: str | Path) -> tuple[np.ndarray, VolumeMeta]:
    """Read an integer label volume as (X, Y, Z) int64 and its geometry.

    Float files are accepted when every value is a whole number (NIfTI labels are often stored as float).

    Raises:
        DataError: naming ``path``, for the reasons of :func:`read_volume`, for more than one channel,
            or for non-integer values.
    """
    path = Path(path)
    array, affine = _read_raw(path)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise DataError(path, f"a label volume must be 3D (X, Y, Z) with one channel, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and (
        not np.isfinite(array).all() or not np.array_equal(array, np.round(array))
    ):
        raise DataError(path, "label volume holds non-integer values; labels must be class indices 0..K-1")
    return array.astype(np.int64), VolumeMeta.from_affine(affine)


def _write_nifti(path: Path, image: nib.Nifti1Image) -> None:
    if volume_suffix(path) not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: volumes are written as NIfTI; use a .nii or .nii.gz name")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = volume_suffix(path)
    tmp = path.with_name(f".{volume_name(path)}.tmp-{os.getpid()}{suffix}")
    try:
        nib.save(image, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def write_label(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write an (X, Y, Z) integer label volume as NIfTI (uint8, or int16/int32 for larger labels).

    The file is written under a temporary name and renamed, so readers never see a partial file.

    Raises:
        ValueError: for an array that is not 3D or not integer, negative labels, an affine that is not
            4x4, or a name that does not end in ``.nii``/``.nii.gz``.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"label volume must be 3D (X, Y, Z), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"label volume must hold integers, got {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"labels must be >= 0, got {array.min()}")
    top = int(array.max(initial=0))
    dtype = np.uint8 if top < 2**8 else np.int16 if top < 2**15 else np.int32
    _write_nifti(Path(path), _nifti(array.astype(dtype), affine))


def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write an image volume (X, Y, Z) or (C, X, Y, Z) as float32 NIfTI (channels stored last).

    Written under a temporary name and renamed, like :func:`write_label`.

    Raises:
        ValueError: for an array that is not 3D or 4D, an affine that is not 4x4, or a name that does
            not end in ``.nii``/``.nii.gz``.
    """
    array = np.asarray(array, np.float32)
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1)
    elif array.ndim != 3:
        raise ValueError(f"volume must be (X, Y, Z) or (C, X, Y, Z), got shape {array.shape}")
    _write_nifti(Path(path), _nifti(array, affine))


def _itk_affine(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """The voxel -> RAS+ mm affine of a SimpleITK image or of a reader that has read its information."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection(), np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def read_geometry(path: str | Path) -> tuple[tuple[int, int, int], VolumeMeta]:
    """Spatial shape (X, Y, Z) and geometry of a volume from its header, without decoding the voxels
    (an ``.npy`` is memory-mapped; an ``.npz`` is read whole). Used for dataset fingerprints.

    Raises:
        DataError: naming ``path``, when the file is missing, empty, not a volume format, or its header
            cannot be read.
    """
    path = Path(path)
    suffix = _check_file(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            image = nib.load(path)
            shape, affine = image.shape, np.asarray(image.affine, np.float64)
        elif suffix in ITK_SUFFIXES:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape, affine = reader.GetSize(), _itk_affine(reader)
        elif suffix == ".npy":
            shape, affine = np.load(path, mmap_mode="r", allow_pickle=False).shape, np.eye(4)
            shape = shape[1:] if len(shape) == 4 else shape
        else:
            array, affine = _read_numpy(path, suffix)
            shape = array.shape[1:] if array.ndim == 4 else array.shape
    except DataError:
        raise
    except Exception as err:
        raise DataError(path, f"cannot be read as a {suffix} volume ({_reason(err)})") from None
    if len(shape) < 3:
        raise DataError(path, f"expected a 3D volume, got shape {tuple(shape)}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), VolumeMeta.from_affine(affine)


def write_nifti(path: str | Path, image: nib.Nifti1Image) -> None:
    """Write a nibabel image with its header as given, atomically like :func:`write_label` (prediction
    writers copy the input's header).

    Raises:
        ValueError: for a name that does not end in ``.nii``/``.nii.gz``.
    """
    _write_nifti(Path(path), image)
