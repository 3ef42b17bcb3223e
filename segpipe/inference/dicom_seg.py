"""Volume predictions as DICOM Segmentation objects (highdicom) for inputs that are DICOM series.

The labels, restored to the input's grid as for NIfTI (:func:`segpipe.inference.volume_writer.restore_prediction`),
are (X, Y, Z) in the voxel order :func:`segpipe.io.volumes.read_volume` gives a series: x along a slice's
columns, y along its rows, z across the slices. Each source instance gets the frame ``labels[:, :, k].T``
(rows, columns), where k is found from the instance's own ImagePositionPatient through the input's affine,
not from file names or InstanceNumber, which need not follow the slices.

The SEG is a BINARY segmentation with one segment per foreground class (segment k is class k, labelled with
the model's class name), algorithm ``segpipe`` of this version, and a generic segmented property
(category and type "Tissue", SNOMED CT); it references the source series and shares its frame of reference,
patient and study. A class without voxels keeps its segment description, with no frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from segpipe import __version__
from segpipe.errors import DataError
from segpipe.io.atomic import atomic_path
from segpipe.io.volumes import dicom_series_files

SEG_SUFFIX = ".dcm"
# The SEG's own series number: DICOM viewers list it after the source series (numbered from 1).
SEG_SERIES_NUMBER = 900
# An instance's position may be off the affine's grid by this share of a voxel (rounding in the files).
POSITION_TOLERANCE = 0.05
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def source_instances(folder: str | Path, affine: np.ndarray, shape: Sequence[int]) -> list[pydicom.Dataset]:
    """The series' instances (their pydicom headers) in slice order: instance k is the
    slice z = k of the volume with RAS+ ``affine`` (4, 4) and ``shape`` (X, Y, Z) read from ``folder``.

    Raises:
        DataError: naming ``folder``, when it is not one DICOM series, or an instance is not a slice of
            that grid (other size, off-grid position, or two instances at one position).
    """
    folder = Path(folder)
    # Headers only: a SEG references its sources by UID and geometry, and pixel data would be read in vain.
    datasets = [pydicom.dcmread(name, stop_before_pixels=True) for name in dicom_series_files(folder)]
    to_voxel = np.linalg.inv(np.asarray(affine, np.float64))
    by_slice: dict[int, pydicom.Dataset] = {}
    for ds in datasets:
        ras = _LPS_TO_RAS @ np.asarray(ds.ImagePositionPatient, np.float64)
        voxel = to_voxel[:3, :3] @ ras + to_voxel[:3, 3]
        k = round(float(voxel[2]))
        off_grid = np.abs(voxel - [0, 0, k]).max() > POSITION_TOLERANCE
        if (ds.Columns, ds.Rows) != tuple(shape[:2]) or off_grid or not 0 <= k < shape[2] or k in by_slice:
            raise DataError(folder, f"instance {ds.SOPInstanceUID} is not a slice of the series' {tuple(shape)} grid")
        by_slice[k] = ds
    if len(by_slice) != shape[2]:
        raise DataError(folder, f"has {len(by_slice)} instances for {shape[2]} slices")
    return [by_slice[k] for k in range(shape[2])]


def segment_descriptions(class_names: Sequence[str]) -> list[hd.seg.SegmentDescription]:
    """One description per foreground class of ``class_names`` (background first): segment k is class k."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="segpipe", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(class_names)
        if k > 0
    ]


def write_dicom_seg(path: str | Path, labels: np.ndarray, geometry: dict[str, Any], class_names: Sequence[str]) -> Path:
    """Write the DICOM-SEG of ``labels`` for the DICOM series ``geometry["source"]`` to ``path``.

    Args:
        path: the ``.dcm`` file to write (atomically; its folder is created).
        labels: (X, Y, Z) class indices 0..K-1 on the series' grid (:func:`restore_prediction`).
        geometry: the item's record; ``source`` is the series folder, ``affine``/``shape`` its grid.
        class_names: K names, background first; one segment per foreground class.

    Returns:
        ``path``.

    Raises:
        DataError: when ``path`` lies in the source folder (a second series there would make the folder
            unreadable as input), or when the folder's instances are not the slices of ``geometry``'s grid.
        ValueError: when ``labels`` has values of no class in ``class_names``.
    """
    path, folder = Path(path), Path(geometry["source"])
    if path.resolve().parent == folder.resolve():
        raise DataError(path, "would be written into its input DICOM series folder; choose another output folder")
    if labels.size and int(labels.max()) >= len(class_names):
        raise ValueError(f"labels reach {int(labels.max())}, but only {len(class_names)} class names are given")
    instances = source_instances(folder, geometry["affine"], labels.shape)
    # (Z, Y, X): (frames, rows, columns). A label map (each value its segment number, 0 none) gives the
    # same pixel data as a one-hot (frames, rows, columns, K-1) array for 3.6x less CPU (512x512x100).
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))
    seg = hd.seg.Segmentation(
        source_images=instances,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(class_names),
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segpipe",
        manufacturer_model_name="segpipe",
        software_versions=__version__,
        device_serial_number="none",
        content_label="SEGPIPE",
        series_description="segpipe segmentation",
        # Frames without foreground are left out, unless every frame is empty (a SEG needs one frame).
        omit_empty_frames=bool(frames.any()),
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
