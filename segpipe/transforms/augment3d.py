"""Build MONAI augmentation steps for volume patches (or slices) from the plain lists written in YAML configs.

Each entry names a MONAI dictionary transform and the arguments a user chooses, e.g.::

    augmentation:
      - {name: RandRotated, range_x: 0.52, range_y: 0.52, range_z: 0.52, prob: 0.2}
      - {name: RandZoomd, min_zoom: 0.7, max_zoom: 1.4, prob: 0.2}
      - {name: RandFlipd, spatial_axis: [0], prob: 0.5}

or ``augmentation: default`` (:data:`DEFAULT_3D_AUGMENTATION`). segpipe sets the rest: the keys (spatial
transforms move ``image`` and ``mask`` together, intensity transforms touch ``image`` only), the
interpolation (linear for the image, nearest for the mask, so mask values stay labels) and the padding.
The steps run on a window larger than the patch (:func:`sampling_window`), which is then centre-cropped
to the patch, so that rotations and zooms out fill the patch with image rather than with padding.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import monai.transforms as mt

from segpipe.errors import SegpipeError

AugmentationSpec = Sequence[Mapping[str, Any]] | Literal["default"] | None

# nnU-Net v2's default training augmentation (nnUNetTrainer.get_training_transforms) in MONAI's terms, with
# its probabilities: rotation +-30 degrees and scaling 0.7-1.4 (each p 0.2; elastic deformation is off in
# nnU-Net v2), Gaussian noise p 0.1, blur p 0.2, brightness p 0.15, low-resolution simulation p 0.25,
# gamma p 0.3 (statistics kept) and mirroring along each axis with p 0.5.
DEFAULT_3D_AUGMENTATION: tuple[dict[str, Any], ...] = (
    {"name": "RandRotated", "range_x": 0.5236, "range_y": 0.5236, "range_z": 0.5236, "prob": 0.2},
    {"name": "RandZoomd", "min_zoom": 0.7, "max_zoom": 1.4, "prob": 0.2},
    {"name": "RandGaussianNoised", "std": 0.1, "prob": 0.1},
    {"name": "RandGaussianSmoothd", "sigma_x": [0.5, 1.0], "sigma_y": [0.5, 1.0], "sigma_z": [0.5, 1.0], "prob": 0.2},
    {"name": "RandScaleIntensityd", "factors": 0.25, "prob": 0.15},
    {"name": "RandSimulateLowResolutiond", "zoom_range": [0.5, 1.0], "prob": 0.25},
    {"name": "RandAdjustContrastd", "gamma": [0.7, 1.5], "retain_stats": True, "prob": 0.3},
    {"name": "RandFlipd", "spatial_axis": [0], "prob": 0.5},
    {"name": "RandFlipd", "spatial_axis": [1], "prob": 0.5},
    {"name": "RandFlipd", "spatial_axis": [2], "prob": 0.5},
)

# Per transform: the arguments segpipe sets (keys aside), as a function of the number of spatial dimensions.
_SPATIAL: dict[str, Any] = {
    "RandRotated": lambda dims: {"mode": ["bilinear", "nearest"], "padding_mode": "border", "keep_size": True},
    "RandZoomd": lambda dims: {
        "mode": ["trilinear" if dims == 3 else "bilinear", "nearest"],
        "padding_mode": "edge",
        "keep_size": True,
    },
    "Rand3DElasticd": lambda dims: {"mode": ["bilinear", "nearest"], "padding_mode": "border"},
    "RandFlipd": lambda dims: {},
}
_INTENSITY: dict[str, Any] = {
    "RandGaussianNoised": lambda dims: {},
    "RandGaussianSmoothd": lambda dims: {},
    "RandScaleIntensityd": lambda dims: {},
    "RandSimulateLowResolutiond": lambda dims: {"upsample_mode": "trilinear" if dims == 3 else "bilinear"},
    "RandAdjustContrastd": lambda dims: {},
}
TRANSFORM_NAMES = (*_SPATIAL, *_INTENSITY)
# The transforms that resample, and so need the window around the patch; the others run on the patch.
RESAMPLING_NAMES = frozenset({"RandRotated", "RandZoomd", "Rand3DElasticd"})
# Arguments a user never sets: what the transform reads and writes, how it resamples and pads, where it runs.
_SEGPIPE_ARGUMENTS = frozenset(
    {"keys", "mode", "padding_mode", "keep_size", "align_corners", "dtype", "allow_missing_keys", "lazy"}
    | {"spatial_size", "device", "downsample_mode", "upsample_mode", "kwargs"}
)
# The plane each rotation angle of RandRotated turns (MONAI's create_rotate: x, then y, then z).
_ROTATION_PLANES_3D = {"range_x": (1, 2), "range_y": (0, 2), "range_z": (0, 1)}


def resolve_augmentation(spec: AugmentationSpec) -> list[dict[str, Any]]:
    """The list of transform entries ``spec`` stands for (``default``: :data:`DEFAULT_3D_AUGMENTATION`).

    Raises:
        SegpipeError: for a string other than ``default`` or an entry without a ``name``.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec != "default":
            raise SegpipeError(f"augmentation must be a list of transforms or 'default', got {spec!r}")
        return copy.deepcopy(list(DEFAULT_3D_AUGMENTATION))
    entries = []
    for index, entry in enumerate(spec):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise SegpipeError(f"augmentation[{index}] must be a mapping with a 'name' key, got {entry!r}")
        entries.append(dict(entry))
    return entries


def user_arguments(name: str) -> list[str]:
    """The arguments of MONAI's ``name`` a config may set (the others are segpipe's)."""
    parameters = inspect.signature(getattr(mt, name)).parameters
    return [p for p in parameters if p not in _SEGPIPE_ARGUMENTS]


def build_augmentation(entries: Sequence[Mapping[str, Any]], spatial_dims: int) -> list[mt.Transform]:
    """The MONAI steps of ``entries`` (see :func:`resolve_augmentation`) for items ``{"image": (C, *S),
    "mask": (1, *S)}`` with ``len(S) == spatial_dims``; entries are checked before anything trains.

    Raises:
        SegpipeError: one line naming the entry and the problem: an unknown transform (with the valid
            names), an argument that does not exist or that segpipe sets (with the valid ones), or values
            MONAI refuses.
    """
    steps = []
    for index, entry in enumerate(entries):
        arguments = dict(entry)
        name = arguments.pop("name")
        where = f"augmentation[{index}] {name}"
        if name not in TRANSFORM_NAMES:
            close = difflib.get_close_matches(str(name), TRANSFORM_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SegpipeError(f"{where}: unknown transform; {hint}valid: {', '.join(TRANSFORM_NAMES)}")
        allowed = user_arguments(name)
        for argument in arguments:
            if argument not in allowed:
                why = "is set by segpipe" if argument in _SEGPIPE_ARGUMENTS else "is not an argument"
                raise SegpipeError(f"{where}: {argument!r} {why}; valid: {', '.join(allowed)}")
        spatial = name in _SPATIAL
        fixed = (_SPATIAL if spatial else _INTENSITY)[name](spatial_dims)
        keys = ["image", "mask"] if spatial else ["image"]
        try:
            steps.append(getattr(mt, name)(keys=keys, **fixed, **arguments))
        except (TypeError, ValueError) as err:
            raise SegpipeError(f"{where}: {' '.join(str(err).split())}") from None
    return steps


def split_at_crop(entries: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``entries`` split into those that run on the window (resampling: rotation, zoom, elastic) and those
    that run on the patch after the centre crop (flips, intensity), each in the given order.

    Intensity transforms cost in proportion to the voxels they touch: a window of a 32x32x16 patch cut for
    +-30 degree rotations and zoom 0.7 holds 22 times its voxels (79x75x60).
    """
    on_window = [dict(entry) for entry in entries if entry["name"] in RESAMPLING_NAMES]
    on_patch = [dict(entry) for entry in entries if entry["name"] not in RESAMPLING_NAMES]
    return on_window, on_patch


def in_plane_augmentation(entries: Sequence[Mapping[str, Any]], slice_axis: int) -> list[dict[str, Any]]:
    """The 2D counterparts of 3D ``entries`` for slices taken along ``slice_axis`` (0, 1 or 2).

    A rotation keeps the angle range that turns the slice plane (the one about ``slice_axis``); flips keep
    their in-plane axes, renumbered (a flip along ``slice_axis`` alone is dropped); zoom and the
    intensity transforms are the same.

    Raises:
        SegpipeError: for ``Rand3DElasticd``, whose deformation has no 2D form with the same arguments.
    """
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    result = []
    for index, entry in enumerate(entries):
        entry = dict(entry)
        name = entry["name"]
        if name == "Rand3DElasticd":
            raise SegpipeError(
                f"augmentation[{index}] Rand3DElasticd has no 2D counterpart with training_mode 'slices'; "
                "leave it out or train on patches"
            )
        if name == "RandRotated":
            angle = entry.get(("range_x", "range_y", "range_z")[slice_axis], 0.0)
            entry = {k: v for k, v in entry.items() if k not in _ROTATION_PLANES_3D} | {"range_x": angle}
        if name == "RandFlipd" and entry.get("spatial_axis") is not None:
            axes = [entry["spatial_axis"]] if isinstance(entry["spatial_axis"], int) else entry["spatial_axis"]
            kept = [in_plane.index(axis) for axis in axes if axis in in_plane]
            if not kept:
                continue
            entry["spatial_axis"] = kept
        result.append(entry)
    return result


def sampling_window(patch_size: Sequence[int], entries: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """The window (voxels, per axis of ``patch_size``: 2 or 3) to crop before ``entries`` run, so that the
    largest rotation and zoom out of the patch-sized centre stay inside it.

    As nnU-Net's ``get_patch_size``, which is not a dependency of segpipe: the bounding box of the patch
    turned by the largest angle of each rotation in turn, divided by the smallest zoom (when below 1).
    """
    window = [float(s) for s in patch_size]
    planes = _ROTATION_PLANES_3D if len(window) == 3 else {"range_x": (0, 1)}
    for entry in entries:
        if entry["name"] == "RandRotated":
            for argument, (a, b) in planes.items():
                angle = _largest_magnitude(entry.get(argument, 0.0))
                window[a], window[b] = _turned_extent(window[a], window[b], angle)
    zooms = [float(entry.get("min_zoom", 0.9)) for entry in entries if entry["name"] == "RandZoomd"]
    shrink = min([1.0, *zooms])
    # less 1e-6: a size that is whole up to rounding (16.0000001) is not rounded up a voxel
    return tuple(max(math.ceil(w / shrink - 1e-6), s) for w, s in zip(window, patch_size, strict=True))


def _largest_magnitude(value: float | Sequence[float]) -> float:
    values = [value] if isinstance(value, int | float) else list(value)
    return max(abs(float(v)) for v in values)


def _turned_extent(a: float, b: float, angle: float) -> tuple[float, float]:
    """The extents of the bounding box of an ``a`` x ``b`` rectangle turned by up to ``angle`` radians."""
    angle = min(angle, math.pi / 2)

    def extent(u: float, v: float) -> float:
        # max of u cos t + v sin t over t in [0, angle]: its peak sqrt(u^2 + v^2) if reached in range
        return math.hypot(u, v) if math.atan2(v, u) <= angle else u * math.cos(angle) + v * math.sin(angle)

    return extent(a, b), extent(b, a)
