"""What runs on a preprocessed (possibly cached) volume: random training patches or slices, then tensors.

Training items are lists of ``samples_per_volume`` windows cropped from one volume (MONAI's multi-sample
convention, collated by ``list_data_collate``); val/test/predict items are whole volumes, collated by
:func:`collate_volumes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from monai.data import list_data_collate
from monai.transforms import (
    BorderPadd,
    CenterSpatialCropd,
    Compose,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    SpatialPadd,
    SqueezeDimd,
    Transform,
)

from segpipe.preprocessing.geometry import GEOMETRY_KEY, spacing_of
from segpipe.transforms.augment3d import (
    build_augmentation,
    in_plane_augmentation,
    sampling_window,
    split_at_crop,
)

TrainingMode = Literal["patches", "slices"]


@dataclass(frozen=True)
class PatchSampling:
    """How training windows are drawn from a preprocessed volume.

    Args:
        patch_size: window (X, Y, Z) in voxels; with ``training_mode: slices`` the in-plane size (the
            two axes other than ``slice_axis``, in order).
        samples_per_volume: windows cropped from each volume each time it is read.
        foreground_fraction: share of windows centred on a foreground voxel (label > 0).
        training_mode: ``patches`` (3D windows) or ``slices`` (windows one slice thick, squeezed to 2D).
        slice_axis: volume axis (0, 1 or 2) slices are taken along.
        augmentation: transform entries (see :mod:`segpipe.transforms.augment3d`) run on each window; with
            ``training_mode: slices`` their 2D counterparts
            (:func:`~segpipe.transforms.augment3d.in_plane_augmentation`) run on each slice.

    Raises:
        ValueError: for an unknown training mode, ``slice_axis`` outside 0..2, a patch size that is not 3
            positive values (2 for slices), ``samples_per_volume < 1`` or ``foreground_fraction``
            outside [0, 1].
        SegpipeError: from :meth:`steps` (or :meth:`augmentation_steps`, which checks the entries), for an
            augmentation entry that cannot be built (one line naming it).
    """

    patch_size: tuple[int, ...]
    samples_per_volume: int = 4
    foreground_fraction: float = 0.33
    training_mode: TrainingMode = "patches"
    slice_axis: int = 2
    augmentation: tuple[Mapping[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.training_mode not in ("patches", "slices"):
            raise ValueError(f"training_mode must be 'patches' or 'slices', got {self.training_mode!r}")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (X, Y or Z), got {self.slice_axis}")
        dims = 2 if self.training_mode == "slices" else 3
        if len(self.patch_size) != dims or min(self.patch_size) < 1:
            shape = "in-plane (H, W) for training_mode 'slices'" if dims == 2 else "(X, Y, Z)"
            raise ValueError(f"patch_size must be {dims} positive sizes {shape}, got {list(self.patch_size)}")
        if self.samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {self.samples_per_volume}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        object.__setattr__(self, "augmentation", tuple(self.augmentation))

    def augmentation_entries(self) -> list[dict[str, Any]]:
        """The augmentation entries for the windows: as given, or their 2D counterparts for slices."""
        if self.training_mode == "slices":
            return in_plane_augmentation(self.augmentation, self.slice_axis)
        return [dict(entry) for entry in self.augmentation]

    def augmentation_steps(self) -> tuple[list[Transform], list[Transform]]:
        """The MONAI augmentation steps that run on the window and those that run on the patch after the
        centre crop (see :func:`~segpipe.transforms.augment3d.split_at_crop`; empty without augmentation)."""
        on_window, on_patch = split_at_crop(self.augmentation_entries())
        dims = len(self.patch_size)
        return build_augmentation(on_window, dims), build_augmentation(on_patch, dims)

    def window(self) -> tuple[int, ...]:
        """The window cropped before augmentation (:func:`~segpipe.transforms.augment3d.sampling_window`),
        centre-cropped to ``patch_size`` after it; ``patch_size`` without augmentation."""
        return sampling_window(self.patch_size, self.augmentation_entries())

    def steps(self) -> list[Transform]:
        """The random steps: pad to the window, find foreground/background voxels, crop the windows,
        then (with augmentation) augment them and centre-crop them to ``patch_size``.

        For slices the window is in-plane and one voxel along ``slice_axis`` (padding only in-plane), and
        that axis is squeezed away after the crop. With augmentation the window is larger than the patch,
        and the volume is first padded by half the difference on each side so that the patch centres
        range over the same voxels as without it.
        """
        window, pad = list(self.window()), list(self.window())
        border = [math.ceil((w - p) / 2) for w, p in zip(window, self.patch_size, strict=True)]
        slices = self.training_mode == "slices"
        if slices:
            window.insert(self.slice_axis, 1)
            pad.insert(self.slice_axis, -1)  # non-positive: keep the volume's size along that axis
            border.insert(self.slice_axis, 0)
        padding: list[Transform] = [BorderPadd(["image", "mask"], spatial_border=border)] if any(border) else []
        steps: list[Transform] = [
            *padding,
            SpatialPadd(["image", "mask"], spatial_size=pad),
            # Padding returns a MetaTensor; foreground/background indices of a NumPy mask are found several
            # times faster (np.nonzero vs torch.nonzero through MetaTensor dispatch), once per volume read.
            EnsureTyped("mask", data_type="numpy", track_meta=False),
            FgBgToIndicesd("mask"),
            # The first random step: CacheDataset caches everything before it.
            RandCropByPosNegLabeld(
                ["image", "mask"],
                label_key="mask",
                spatial_size=window,
                pos=self.foreground_fraction,
                neg=1.0 - self.foreground_fraction,
                num_samples=self.samples_per_volume,
                fg_indices_key="mask_fg_indices",
                bg_indices_key="mask_bg_indices",
            ),
        ]
        if slices:  # (C, ..., 1, ...) -> (C, H, W); the mask keeps its channel axis until the tensors
            steps.append(SqueezeDimd(["image", "mask"], dim=self.slice_axis + 1))
        on_window, on_patch = self.augmentation_steps()
        if on_window:
            steps += [*on_window, CenterSpatialCropd(["image", "mask"], roi_size=self.patch_size)]
        return [*steps, *on_patch]

    def after_preprocessing(self, train: bool) -> Compose:
        """What runs on a preprocessed item: for training :meth:`steps`, then plain tensors
        (``image`` float32, ``mask`` int64 without its channel axis)."""
        to_tensors: list[Transform] = [
            SqueezeDimd("mask", dim=0, allow_missing_keys=True),
            EnsureTyped("image", dtype=torch.float32, track_meta=False),
            EnsureTyped("mask", dtype=torch.int64, track_meta=False, allow_missing_keys=True),
        ]
        # Training windows do not need the geometry record (it is for mapping predictions back).
        steps = [DeleteItemsd(GEOMETRY_KEY), *self.steps()] if train else []
        return Compose([*steps, *to_tensors])


def collate_volumes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate whole-volume items; ``geometry`` stays a list of per-item records (numpy, not moved to the
    device) and ``spacing`` (B, 3) float32 gives their voxel size in mm (for per-case reports)."""
    records = [item.get(GEOMETRY_KEY) for item in items]
    batch = list_data_collate([{k: v for k, v in item.items() if k != GEOMETRY_KEY} for item in items])
    if all(record is not None for record in records):
        batch[GEOMETRY_KEY] = records
        spacings = [spacing_of(record["resampled_affine"]) for record in records]
        batch["spacing"] = torch.as_tensor(np.stack(spacings), dtype=torch.float32)
    return batch


def seed_sampling(transform: Compose, index: int) -> None:
    """Seed the random steps of ``transform`` from the per-sample seed ``index`` carries (a
    :class:`~segpipe.distributed.SampleIndex` of the training sampler), so a case's windows in an epoch
    depend on the run seed, the epoch and the case only: the same on any number of workers or
    processes, and after a mid-epoch resume. Plain indices (val/test) leave the state as it is."""
    seed = getattr(index, "seed", None)
    if seed is not None:
        transform.set_random_state(seed=seed)
