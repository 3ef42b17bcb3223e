"""Volume predictions as NIfTI files on the input's grid: a label mask and, optionally, class probabilities.

The network's probabilities, on the preprocessed grid, are mapped back to the input file's grid
(:func:`segpipe.preprocessing.geometry.restore_geometry`: resampled linearly, un-cropped as background,
reoriented back; probabilities are resampled, not labels, as nnU-Net does) and only then turned into
labels by argmax, so the mask has the input's shape and spacing voxel for voxel.

Headers: a NIfTI input's header is copied (qform and sform with their codes, pixdim including qfac,
xyzt_units, description), with the data type changed and scaling removed. NRRD/MHA/MHD inputs, whose
geometry is LPS+, give NIfTI outputs with the equivalent RAS+ affine (the same physical placement;
qform/sform code 1 "scanner", millimetres); NumPy inputs use their stored affine (identity when none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from segpipe.errors import DataError
from segpipe.io.volumes import NIFTI_SUFFIXES, volume_suffix, write_nifti
from segpipe.preprocessing.geometry import restore_geometry

PROBABILITIES_SUFFIX = "_probabilities"


def label_dtype(num_classes: int) -> type[np.unsignedinteger]:
    """uint8 for up to 256 classes, else uint16.

    Raises:
        ValueError: for more than 65536 classes.
    """
    if num_classes <= 2**8:
        return np.uint8
    if num_classes <= 2**16:
        return np.uint16
    raise ValueError(f"{num_classes} classes do not fit a uint16 label volume")


def reference_header(source: str | Path, affine: np.ndarray) -> tuple[type[nib.Nifti1Image], np.ndarray, Any]:
    """Image class, affine and a fresh copy of the header for outputs on the grid of ``source``.

    A NIfTI ``source`` gives its own class (NIfTI-1 or -2), affine and header; any other format a
    NIfTI-1 header built from ``affine`` (the input's geometry in RAS+) with qform/sform code 1 and mm.
    """
    if volume_suffix(source) in NIFTI_SUFFIXES:
        image = nib.load(source)
        header = image.header.copy()
        header.set_slope_inter(None, None)
        header["cal_min"], header["cal_max"] = 0, 0
        header.set_intent("none")
        return type(image), np.asarray(image.affine, np.float64), header
    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    return nib.Nifti1Image, np.asarray(affine, np.float64), header


def _image(kind: type[nib.Nifti1Image], array: np.ndarray, affine: np.ndarray, header: Any) -> nib.Nifti1Image:
    header = header.copy()
    header.set_data_dtype(array.dtype)
    # An affine equal to the header's keeps the header's qform/sform (nibabel rewrites them otherwise).
    return kind(array, affine, header)


def restore_prediction(probabilities: torch.Tensor, geometry: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray]:
    """Class probabilities and labels on the input file's grid.

    Args:
        probabilities: (K, *resampled_shape) class probabilities on the preprocessed grid (any device;
            mapped back on the CPU).
        geometry: the item's record (``item["geometry"]``).

    Returns:
        (K, X, Y, Z) float32 probabilities and their argmax, (X, Y, Z) labels of :func:`label_dtype`, both
        on the grid of ``geometry["source"]`` in its voxel order.
    """
    num_classes = int(probabilities.shape[0])
    background = torch.zeros(num_classes)
    background[0] = 1.0  # outside the crop box: class 0 with certainty
    # On the host, as nnU-Net exports: the file is written from host memory anyway, and the accelerator's
    # memory stays free for the next case (a full-resolution (K, X, Y, Z) float volume).
    restored = restore_geometry(probabilities.detach().float().cpu(), geometry, fill=background.tolist())
    return restored, restored.argmax(0).numpy().astype(label_dtype(num_classes))


def probabilities_output(output_dir: Path, name: str, restored: torch.Tensor) -> tuple[Path, np.ndarray]:
    """``output_dir/<name>_probabilities.nii.gz`` and its (X, Y, Z, K) float32 array from (K, X, Y, Z)."""
    channels_last = np.ascontiguousarray(restored.permute(1, 2, 3, 0).numpy(), dtype=np.float32)
    return output_dir / f"{name}{PROBABILITIES_SUFFIX}.nii.gz", channels_last


def write_nifti_outputs(outputs: list[tuple[Path, np.ndarray]], geometry: dict[str, Any]) -> list[Path]:
    """Write each (path, array on the input's grid) as NIfTI with the input's header (:func:`reference_header`).

    Raises:
        DataError: when an output would overwrite its own input file (before anything is written).
    """
    source = Path(geometry["source"]).resolve()
    for path, _ in outputs:
        if path.resolve() == source:
            raise DataError(path, "would overwrite the input volume; choose another --predict_writer.output_dir")
    kind, affine, header = reference_header(geometry["source"], np.asarray(geometry["affine"]))
    for path, array in outputs:
        write_nifti(path, _image(kind, array, affine, header))
    return [path for path, _ in outputs]


def write_volume_prediction(
    output_dir: str | Path,
    name: str,
    probabilities: torch.Tensor,
    geometry: dict[str, Any],
    save_probabilities: bool = False,
) -> list[Path]:
    """Write ``output_dir/<name>.nii.gz`` (labels) and, with ``save_probabilities``,
    ``output_dir/<name>_probabilities.nii.gz`` ((X, Y, Z, K) float32) on the input's grid.

    Args:
        output_dir: destination folder (created if missing).
        name: case name; nnU-Net inputs ``case_0000.nii.gz`` give ``case.nii.gz``.
        probabilities: (K, *resampled_shape) class probabilities on the preprocessed grid (any device;
            mapped back on the CPU).
        geometry: the item's record (``item["geometry"]``).
        save_probabilities: also write the probabilities.

    Returns:
        The paths written.

    Raises:
        DataError: when an output would overwrite its own input file.
    """
    output_dir = Path(output_dir)
    restored, labels = restore_prediction(probabilities, geometry)
    outputs = [(output_dir / f"{name}.nii.gz", labels)]
    if save_probabilities:
        outputs.append(probabilities_output(output_dir, name, restored))
    return write_nifti_outputs(outputs, geometry)
