"""Readers and writers for 3D volumes and label volumes: NIfTI, NRRD/MHA/MHD, DICOM series and NumPy files.

Shape contract: volumes are returned as (C, X, Y, Z) float32 and labels as (X, Y, Z) int64, indexed like
nibabel's data arrays (i along the first axis). Every reader also returns a :class:`VolumeMeta` whose
``affine`` maps voxel indices (i, j, k) to RAS+ millimetres, the NIfTI convention; SimpleITK's LPS+
geometry is converted, so that an image in one format and its label in another can be compared.

Channel conventions: a 4D NIfTI or a vector-valued NRRD/MHA stores channels last (X, Y, Z, C); a 4D
``.npy``/``.npz`` array is channel-first (C, X, Y, Z). NumPy files carry no geometry: their affine is the
identity (1 mm voxels), unless an ``.npz`` holds a 4x4 array named ``affine`` beside the data.

A DICOM series is a folder of slice files (SimpleITK ``ImageSeriesReader``, slices ordered by GDCM from
their positions); a folder must hold exactly one series (one SeriesInstanceUID), and its slices must be
evenly spaced, since the affine assumes one slice spacing.

Headers are read before any voxel data (nibabel and SimpleITK read them separately), so a file that
claims more than :data:`MAX_VOXELS` voxels, has the wrong dimensionality or is shorter than its header
says is refused without decoding it.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from segpipe.errors import DataError
from segpipe.io.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
NUMPY_SUFFIXES = (".npy", ".npz")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + NUMPY_SUFFIXES
DICOM_SUFFIXES = (".dcm",)

# Refuse volumes whose header claims more voxels than this (2**30: 4 GiB as float32) before allocating;
# a 512 x 512 x 1000 CT has 2.6e8.
MAX_VOXELS = 2**30
# A DICOM series whose slice positions deviate from even spacing by more than this share of the
# median slice step (a missing slice deviates by 100 %) is refused.
DICOM_SPACING_TOLERANCE = 0.01

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
    """The case name of a volume: ``case_01.nii.gz`` -> ``case_01``; a DICOM folder keeps its whole name."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix:
        return path.name[: -len(suffix)]
    return path.name if path.is_dir() else path.stem


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as file:
            return file.read(132)[128:] == b"DICM"  # the Part 10 preamble
    except OSError:
        return False


def is_dicom_series(path: str | Path, probe: int = 8) -> bool:
    """Whether ``path`` is a folder holding DICOM files (``.dcm`` names or the ``DICM`` preamble).

    Only the first ``probe`` files (in name order) are looked at, so this is cheap on large series; a
    folder that passes may still fail to read (see :func:`read_volume`).
    """
    path = Path(path)
    if not path.is_dir():
        return False
    files = (p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
    return any(_is_dicom_file(p) for _, p in zip(range(probe), files, strict=False))


def _check_path(path: Path) -> str:
    """The reader to use: a volume suffix, or ``"dicom"`` for a folder."""
    if not path.exists():
        raise DataError(path, "file does not exist (dangling link?)" if path.is_symlink() else "file does not exist")
    suffix = volume_suffix(path)
    if path.is_dir():
        if suffix is not None:
            raise DataError(path, f"is a folder, expected a {suffix} file")
        return "dicom"
    if not path.is_file():
        raise DataError(path, "is not a regular file")
    if suffix is None:
        raise DataError(
            path, f"unsupported volume format; use one of {', '.join(VOLUME_SUFFIXES)} or a folder of DICOM slices"
        )
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    return suffix


def _check_voxels(path: Path, shape: tuple[int, ...]) -> None:
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels > MAX_VOXELS:
        raise DataError(
            path, f"header claims shape {tuple(shape)} ({voxels:.3g} voxels), over the limit of {MAX_VOXELS}"
        )


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    _check_voxels(path, image.shape)
    if path.name.lower().endswith(".nii"):  # uncompressed: the size the header implies is known
        needed = image.dataobj.offset + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            size = path.stat().st_size
            problem = f"truncated (header needs {needed} bytes, file has {size})"
            raise DataError(path, f"cannot be read as a .nii volume: {problem}")
    # dataobj applies scl_slope/scl_inter; integer labels without scaling keep their integer type.
    array = np.asanyarray(image.dataobj)
    if array.ndim == 5 and array.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI vector intent
        array = array[:, :, :, 0]
    if array.ndim == 4:
        array = np.moveaxis(array, -1, 0)
    return array, np.asarray(image.affine, np.float64)


def _itk_affine(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """The voxel -> RAS+ mm affine of a SimpleITK image or of a reader that has read its information."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection(), np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def _itk_array_affine(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) or (C, X, Y, Z) array and RAS+ affine of a 3D SimpleITK image."""
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X) or (Z, Y, X, C)
    array = array.transpose(3, 2, 1, 0) if array.ndim == 4 else array.transpose(2, 1, 0)
    return array, _itk_affine(image)


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # header only
    if reader.GetDimension() != 3:
        raise DataError(path, f"expected a 3D image, got a {reader.GetDimension()}D one (size {reader.GetSize()})")
    _check_voxels(path, (*reader.GetSize(), reader.GetNumberOfComponents()))
    return _itk_array_affine(reader.Execute())


@contextmanager
def _itk_quiet() -> Iterator[None]:
    """Silence ITK's warnings (printed straight to stderr), which the caller turns into DataErrors."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _check_slice_spacing(path: Path, positions: list[str], normal: np.ndarray) -> None:
    """Refuse slices (ImagePositionPatient ``x\\y\\z`` strings, in series order) that are not evenly spaced."""
    try:
        along = np.asarray([[float(v) for v in p.strip().split("\\")] for p in positions]) @ normal
    except ValueError:
        return  # unparsable positions: ITK has ordered the slices by what it could read
    steps = np.abs(np.diff(along))
    step = float(np.median(steps))
    deviation = float(np.abs(steps - step).max())
    if deviation > DICOM_SPACING_TOLERANCE * max(step, 1e-6):
        raise DataError(
            path,
            f"DICOM slices are not evenly spaced (steps of {steps.min():.4g} to {steps.max():.4g} mm): "
            "missing or duplicate slices?",
        )


def dicom_series_files(path: str | Path) -> list[str]:
    """The files of the one DICOM series in folder ``path``, in slice order (GDCM's, by position): the
    files whose slices :func:`read_volume` stacks along z.

    Raises:
        DataError: naming ``path``, when it holds no DICOM series or more than one.
    """
    path = Path(path)
    with _itk_quiet():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise DataError(path, "is a folder without a DICOM series (expected a volume file or DICOM slices)")
        files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid) for uid in series}
    if len(series) > 1:
        found = ", ".join(f"{uid} ({len(names)} slices)" for uid, names in files.items())
        raise DataError(path, f"holds {len(series)} DICOM series ({found}); put each series in its own folder")
    return list(files[series[0]])


def _read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    names = dicom_series_files(path)
    with _itk_quiet():
        first = sitk.ImageFileReader()
        first.SetFileName(names[0])
        first.ReadImageInformation()
        _check_voxels(path, (*first.GetSize()[:2], len(names), first.GetNumberOfComponents()))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        reader.MetaDataDictionaryArrayUpdateOn()  # per-slice tags, for the spacing check
        image = reader.Execute()
    if image.GetDimension() != 3:
        raise DataError(path, f"holds one {image.GetDimension()}D DICOM image; a volume needs a series of slices")
    positions = [reader.GetMetaData(i, "0020|0032") for i in range(len(names)) if reader.HasMetaDataKey(i, "0020|0032")]
    if len(positions) == len(names) > 2:
        _check_slice_spacing(path, positions, np.asarray(image.GetDirection()).reshape(3, 3)[:, 2])
    return _itk_array_affine(image)


def _read_numpy(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    if suffix == ".npy":
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # header (and a size check) first
        _check_voxels(path, mapped.shape)
        return np.array(mapped), np.eye(4)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    affine = arrays.pop("affine", np.eye(4))
    if len(arrays) != 1:
        raise DataError(path, f"an .npz volume must hold one array (plus 'affine'), found {sorted(arrays) or 'none'}")
    if np.shape(affine) != (4, 4):
        raise DataError(path, f"'affine' must be a 4x4 array, got shape {np.shape(affine)}")
    return next(iter(arrays.values())), np.asarray(affine, np.float64)


def _reason(err: Exception, path: Path) -> str:
    """One line for the user: SimpleITK's multi-line messages are cut to the text after ``ERROR:``, and
    the path (already named by the DataError) is dropped from the library's text."""
    text = " ".join(str(err).split())
    if "ERROR:" in text:
        return text.rsplit("ERROR:", 1)[1].strip()
    for quoted in (f'"{path}"', f"'{path}'", str(path)):
        text = text.replace(quoted, "").replace(" from  ", " ").strip()
    return f"{type(err).__name__}: {text}"


_NIFTI_MAGICS = (b"n+1\0", b"ni1\0", b"n+2\0", b"ni2\0")


def _nifti_problem(path: Path) -> str | None:
    """Why a NIfTI file that nibabel could not read is broken, when that can be told (gzip, header)."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as file:
            head = file.read(544)
            while file.read(1 << 20):  # decompress to the end: a truncated stream fails here
                pass
    except gzip.BadGzipFile:
        return "not gzip-compressed, although it is named .nii.gz"
    except EOFError:
        return "truncated (the gzip stream ends early)"
    except (OSError, zlib.error) as err:
        return f"corrupt gzip data ({err})"
    if head[344:348] not in _NIFTI_MAGICS and head[4:8] not in _NIFTI_MAGICS:
        return "no NIfTI header (not a NIfTI file?)"
    return None


def _read_raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array as (X, Y, Z) or (C, X, Y, Z) and its affine, in the stored dtype."""
    kind = _check_path(path)
    try:
        if kind == "dicom":
            array, affine = _read_dicom(path)
        elif kind in NIFTI_SUFFIXES:
            array, affine = _read_nifti(path)
        elif kind in ITK_SUFFIXES:
            array, affine = _read_itk(path)
        else:
            array, affine = _read_numpy(path, kind)
    except DataError:
        raise
    except Exception as err:
        what = "a DICOM series" if kind == "dicom" else f"a {kind} volume"
        problem = (_nifti_problem(path) if kind in NIFTI_SUFFIXES else None) or _reason(err, path)
        raise DataError(path, f"cannot be read as {what}: {problem}") from None
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
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


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


def read_geometry(path: str | Path) -> tuple[tuple[int, int, int], VolumeMeta]:
    """Spatial shape (X, Y, Z) and geometry of a volume from its header, without decoding the voxels
    (an ``.npy`` is memory-mapped; an ``.npz`` and a DICOM series are read whole). Used for dataset
    fingerprints.

    Raises:
        DataError: naming ``path``, when the file is missing, empty, not a volume format, or its header
            cannot be read.
    """
    path = Path(path)
    suffix = _check_path(path)
    try:
        if suffix == "dicom":
            array, affine = _read_dicom(path)
            shape = array.shape[1:] if array.ndim == 4 else array.shape
        elif suffix in NIFTI_SUFFIXES:
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
        raise DataError(path, f"cannot be read as a {suffix} volume: {_reason(err, path)}") from None
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
