"""Read one volume case (channel files + label) and check that its files share one geometry."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.transforms import Transform

from segpipe.data.sources.layouts import VolumeCase
from segpipe.errors import DataError
from segpipe.io.volumes import VolumeMeta, read_label, read_volume
from segpipe.preprocessing.geometry import GEOMETRY_KEY, geometry_record

# Image and label geometry must agree to this many millimetres (affine entries, spacing included).
AFFINE_ATOL = 1e-3


def same_geometry(a: VolumeMeta, b: VolumeMeta) -> bool:
    """Whether two affines agree within :data:`AFFINE_ATOL` mm."""
    return bool(np.allclose(a.affine, b.affine, rtol=0, atol=AFFINE_ATOL))


def geometry_problem(what: str, meta: VolumeMeta, reference: VolumeMeta, ref_name: str) -> str:
    """Why ``meta`` does not match ``reference``: both spacings and origins, and the tolerance."""
    spacing = tuple(round(s, 4) for s in meta.spacing)
    ref_spacing = tuple(round(s, 4) for s in reference.spacing)
    origin = tuple(np.round(meta.affine[:3, 3], 3).tolist())
    ref_origin = tuple(np.round(reference.affine[:3, 3], 3).tolist())
    return (
        f"{what} affine differs from {ref_name} (spacing {spacing} vs {ref_spacing}, "
        f"origin {origin} vs {ref_origin}; tolerance {AFFINE_ATOL} mm)"
    )


def load_case(case: VolumeCase) -> tuple[np.ndarray, np.ndarray | None, VolumeMeta]:
    """Read a case: image (C, X, Y, Z) float32, label (X, Y, Z) int64 or None, and the image geometry.

    Raises:
        DataError: naming the file, when a file cannot be read (see :mod:`segpipe.io.volumes`), when
            channel files differ in shape or affine, or when the label's shape or affine differs from
            the image's.
        ValueError: for a case without image files.
    """
    arrays: list[np.ndarray] = []
    meta: VolumeMeta | None = None
    for path in case.images:
        array, channel_meta = read_volume(path)
        if meta is None:
            meta = channel_meta
        elif array.shape[1:] != arrays[0].shape[1:]:
            raise DataError(path, f"shape {array.shape[1:]} differs from channel 0 {arrays[0].shape[1:]}")
        elif not same_geometry(channel_meta, meta):
            raise DataError(path, geometry_problem("channel", channel_meta, meta, case.images[0].name))
        arrays.append(array)
    if meta is None:
        raise ValueError(f"case {case.name!r} lists no image files")
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    if case.label is None:
        return image, None, meta
    label, label_meta = read_label(case.label)
    if label.shape != image.shape[1:]:
        raise DataError(
            case.label, f"label shape {label.shape} differs from image shape {image.shape[1:]} ({case.images[0].name})"
        )
    if not same_geometry(label_meta, meta):
        raise DataError(case.label, geometry_problem("label", label_meta, meta, f"image {case.images[0].name}"))
    return image, label, meta


class LoadCased(Transform):
    """MONAI transform ``{"case": VolumeCase}`` -> ``{"image": (C, X, Y, Z) float32, "mask": (1, X, Y, Z)
    int64, "name": str, "geometry": {...}}`` (no ``"mask"`` for a case without label), reading through
    :func:`load_case`; ``geometry`` is the file's record (:func:`segpipe.preprocessing.geometry.geometry_record`).
    """

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        case: VolumeCase = data["case"]
        image, label, meta = load_case(case)
        out: dict[str, Any] = {
            "image": image,
            "name": case.name,
            GEOMETRY_KEY: geometry_record(str(case.images[0]), meta.affine, image.shape[1:]),
        }
        if label is not None:
            out["mask"] = label[None]
        return out
