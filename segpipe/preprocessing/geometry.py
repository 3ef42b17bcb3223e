"""Volume geometry: reorientation, crop to the non-zero region and resampling for training, and the
inverse that puts a prediction back on the input file's grid.

:class:`VolumeGeometryd` runs, in this order (nnU-Net's: crop, then resample):

1. reorientation to ``orientation`` axis codes (``RAS``): a permutation and flip of the voxel axes
   (MONAI ``Orientation``), exact;
2. crop to the bounding box of the voxels that are non-zero in any channel, widened by a margin;
3. resampling to ``spacing`` mm (MONAI ``Spacing``: the first voxel centre stays in place; directions
   are kept, so an oblique scan stays oblique): images by spline interpolation of ``order``
   (1: trilinear), labels by nearest neighbour.

Each step is recorded in ``item["geometry"]``, plain data that survives caching and collation:

=================== ======== ==================================================================
``source``          str      the case's first image file (its header is copied by the writer)
``affine``          (4, 4)   the file's voxel -> RAS+ mm affine (float64)
``shape``           (3,)     the file's spatial shape (int64)
``oriented_affine`` (4, 4)   after step 1
``oriented_shape``  (3,)
``crop_start``      (3,)     step 2's box ``[start, stop)`` in the oriented grid (the whole grid
``crop_stop``       (3,)     when nothing is cropped)
``resampled_affine`` (4, 4)  after step 3: the grid of ``item["image"]``
``resampled_shape`` (3,)
=================== ======== ==================================================================

:func:`restore_geometry` runs the steps backwards on a (K, X, Y, Z) prediction: linear resampling onto
the cropped grid (a convex combination, so probabilities stay probabilities), the crop padded back
with one fill value per channel, the reorientation undone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, Spacing, SpatialResample, Transform
from monai.transforms.utils import generate_spatial_bounding_box

GEOMETRY_KEY = "geometry"
# nibabel's axis labels (RAS+ world); MONAI warns unless they are given explicitly.
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
# Spacings that differ by less than this (mm) are equal: headers often store 0.79999995 for 0.8.
SPACING_ATOL = 1e-3


def geometry_record(source: str, affine: np.ndarray, shape: Sequence[int]) -> dict[str, Any]:
    """The record of a volume as read from ``source``: every step still the identity."""
    affine = np.asarray(affine, np.float64)
    shape = np.asarray(shape, np.int64)
    return {
        "source": str(source),
        "affine": affine,
        "shape": shape,
        "oriented_affine": affine.copy(),
        "oriented_shape": shape.copy(),
        "crop_start": np.zeros(3, np.int64),
        "crop_stop": shape.copy(),
        "resampled_affine": affine.copy(),
        "resampled_shape": shape.copy(),
    }


def oriented_axes(affine: np.ndarray, orientation: str | None) -> np.ndarray:
    """For each voxel axis of ``affine``, the axis it becomes after reorientation to ``orientation``
    (the identity for ``None``)."""
    if orientation is None:
        return np.arange(3)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(orientation, AXIS_LABELS)
    )
    return transform[:, 0].astype(int)


def crop_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Affine of the sub-grid of ``affine`` that starts at voxel ``start``."""
    out = np.array(affine, np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, np.float64) + affine[:3, 3]
    return out


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (3,) in mm: the column norms of the affine."""
    return np.asarray(nib.affines.voxel_sizes(np.asarray(affine, np.float64)), np.float64)


def _interpolation(order: int) -> tuple[str | int, str]:
    """MONAI resampling ``mode`` and ``padding_mode`` for a spline order (0-5)."""
    if order in (0, 1):
        return ("nearest" if order == 0 else "bilinear"), "border"
    return order, "nearest"  # scipy map_coordinates: its padding names differ from torch's


def _meta(array: np.ndarray | torch.Tensor, affine: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(affine, dtype=torch.float64))


def _numpy(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)


class VolumeGeometryd(Transform):
    """Reorient, crop and resample ``{"image": (C, X, Y, Z), "mask": (1, X, Y, Z), "geometry": {...}}``
    (mask optional) and record each step in ``geometry`` (see the module docstring).

    Args:
        orientation: target axis codes, e.g. ``RAS``; ``None`` keeps the file's voxel order.
        spacing: target voxel size (3,) in mm along the (reoriented) axes; ``None`` keeps the spacing.
        order: spline order of image interpolation, 0-5 (1 trilinear, 3 cubic B-spline as nnU-Net).
        crop_nonzero: crop to the voxels that are non-zero in any channel (all kept for an all-zero image).
        crop_margin: voxels kept around that box, one value or one per axis.

    Raises:
        ValueError: for invalid axis codes, non-positive spacings, an order outside 0-5 or a negative margin.
    """

    def __init__(
        self,
        orientation: str | None = "RAS",
        spacing: Sequence[float] | None = None,
        order: int = 1,
        crop_nonzero: bool = False,
        crop_margin: int | Sequence[int] = 0,
    ) -> None:
        if orientation is not None:
            axes = sorted(i for code in orientation for i, pair in enumerate(AXIS_LABELS) if code in pair)
            if len(orientation) != 3 or axes != [0, 1, 2]:
                raise ValueError(f"orientation must name each of L/R, P/A, I/S once (e.g. RAS), got {orientation!r}")
        if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
            raise ValueError(f"spacing must be 3 positive sizes in mm, got {list(spacing)}")
        if not 0 <= order <= 5:
            raise ValueError(f"interpolation order must be in 0..5, got {order}")
        margin = [crop_margin] * 3 if isinstance(crop_margin, int) else list(crop_margin)
        if len(margin) != 3 or min(margin) < 0:
            raise ValueError(f"crop_margin must be >= 0 (one value or 3), got {crop_margin}")
        self.orientation = orientation
        self.spacing = None if spacing is None else np.asarray(spacing, np.float64)
        self.order = order
        self.crop_nonzero = crop_nonzero
        self.crop_margin = margin

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        geometry = dict(data[GEOMETRY_KEY])
        image = np.asarray(data["image"])
        mask = np.asarray(data["mask"]) if "mask" in data else None
        affine = np.asarray(geometry["affine"], np.float64)

        if self.orientation is not None and "".join(nib.aff2axcodes(affine, AXIS_LABELS)) != self.orientation:
            reorient = Orientation(axcodes=self.orientation, labels=AXIS_LABELS)
            oriented = reorient(_meta(image, affine))
            image, affine = _numpy(oriented, np.float32), oriented.affine.numpy().astype(np.float64)
            if mask is not None:
                mask = _numpy(reorient(_meta(mask, geometry["affine"])), np.int64)
        geometry["oriented_affine"], geometry["oriented_shape"] = affine, np.asarray(image.shape[1:], np.int64)

        start, stop = np.zeros(3, np.int64), np.asarray(image.shape[1:], np.int64)
        if self.crop_nonzero:
            box_start, box_stop = generate_spatial_bounding_box(
                image, select_fn=lambda x: x != 0, margin=self.crop_margin, allow_smaller=True
            )
            if np.prod(np.subtract(box_stop, box_start)) > 0:  # an all-zero image is kept whole
                start, stop = np.asarray(box_start, np.int64), np.asarray(box_stop, np.int64)
                box = (slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True)))
                image = np.ascontiguousarray(image[box])
                mask = None if mask is None else np.ascontiguousarray(mask[box])
                affine = crop_affine(affine, start)
        geometry["crop_start"], geometry["crop_stop"] = start, stop

        if self.spacing is not None and not np.allclose(spacing_of(affine), self.spacing, rtol=0, atol=SPACING_ATOL):
            mode, padding = _interpolation(self.order)
            resample = Spacing(self.spacing, mode=mode, padding_mode=padding, dtype=np.float32)
            resampled = resample(_meta(image, affine))
            if mask is not None:
                label = resample(_meta(mask.astype(np.float32), affine), mode="nearest", padding_mode="border")
                mask = _numpy(label, np.int64)
            image, affine = _numpy(resampled, np.float32), resampled.affine.numpy().astype(np.float64)
        geometry["resampled_affine"], geometry["resampled_shape"] = affine, np.asarray(image.shape[1:], np.int64)

        out["image"], out[GEOMETRY_KEY] = image, geometry
        if mask is not None:
            out["mask"] = mask
        return out


def restore_geometry(
    volume: torch.Tensor, geometry: dict[str, Any], fill: float | Sequence[float] = 0.0
) -> torch.Tensor:
    """Map ``volume`` (K, *resampled_shape), on the grid of a preprocessed item, onto the input file's
    grid (K, *shape): linear resampling back to the cropped grid, the crop padded with ``fill`` (one
    value, or one per channel: ``[1, 0, ..., 0]`` makes class probabilities background outside the
    crop), the reorientation undone. Runs on ``volume``'s device; returns float32.

    Raises:
        ValueError: when ``volume`` is not on the grid that ``geometry`` describes.
    """
    expected = tuple(int(s) for s in geometry["resampled_shape"])
    if volume.ndim != 4 or tuple(volume.shape[1:]) != expected:
        raise ValueError(f"volume has shape {tuple(volume.shape)}, expected (K, {', '.join(map(str, expected))})")
    x = volume.float()
    start, stop = np.asarray(geometry["crop_start"], np.int64), np.asarray(geometry["crop_stop"], np.int64)
    cropped_affine = crop_affine(np.asarray(geometry["oriented_affine"], np.float64), start)
    cropped_shape = [int(s) for s in stop - start]
    resampled_affine = np.asarray(geometry["resampled_affine"], np.float64)
    if list(expected) != cropped_shape or not np.allclose(resampled_affine, cropped_affine, rtol=0, atol=1e-6):
        resample = SpatialResample(mode="bilinear", padding_mode="border", dtype=np.float32)
        x = resample(_meta(x, resampled_affine), dst_affine=torch.as_tensor(cropped_affine), spatial_size=cropped_shape)
        x = x.as_tensor()

    oriented_shape = [int(s) for s in geometry["oriented_shape"]]
    if cropped_shape != oriented_shape:
        values = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        full = values.expand(x.shape[0], *oriented_shape).clone()
        full[(slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True)))] = x
        x = full

    affine = np.asarray(geometry["affine"], np.float64)
    original_codes = "".join(nib.aff2axcodes(affine, AXIS_LABELS))
    if "".join(nib.aff2axcodes(geometry["oriented_affine"], AXIS_LABELS)) != original_codes:
        x = Orientation(axcodes=original_codes, labels=AXIS_LABELS)(_meta(x, geometry["oriented_affine"])).as_tensor()
    shape = tuple(int(s) for s in geometry["shape"])
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"restored shape {tuple(x.shape[1:])} differs from the input's {shape}")
    return x
