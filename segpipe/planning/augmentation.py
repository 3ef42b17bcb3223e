"""Training augmentation of a plan, written as the DataModules take it: albumentations specs for 2D folders,
MONAI dictionary transform specs for volumes.

Two decisions: which axes are mirrored (from the data: those along which the dataset's mean label map is
symmetric, left-right in brains, every axis where structures lie anywhere), and how much else is applied
(from the run's length).
nnU-Net v2's set (``nnUNetTrainer.get_training_transforms``: rotation and scaling p=0.2, noise, blur,
brightness/contrast p=0.15, gamma p=0.3) regularises its 1000-epoch runs; a short run sees each case only a
few times and learns faster from the cases as they are. On the 2D demo at 7 epochs (U-Net, same plan
otherwise) the nnU-Net set reached test Dice 0.921, without the anterior-posterior flip 0.928, left-right
mirroring only 0.944; at 30 epochs the set without the flip 0.919, mirroring only 0.953 (docs/planning.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from segpipe.transforms.augment3d import DEFAULT_3D_AUGMENTATION

ROTATION_DEGREES = 15  # nnU-Net rotates 2D by up to 180 degrees; anatomy in fixed orientation gains little
SCALE = (0.85, 1.25)  # nnU-Net's scaling range
MIRROR_SYMMETRY = 0.9  # an axis whose mean label map overlaps its mirror image this much is mirrored
FULL_AUGMENTATION_EPOCHS = 100  # passes over the training set from which the whole nnU-Net set is applied
CROP_TRANSFORMS = ("PadIfNeeded", "RandomCrop")  # the 2D patch sampling a folder plan puts first
FLIPS_2D = {0: "VerticalFlip", 1: "HorizontalFlip"}  # albumentations' flip of each (H, W) axis


def mirrored_axes(symmetry: Sequence[float]) -> list[int]:
    """The spatial axes whose mirror symmetry (the fingerprint's ``mirror_symmetry``) is at least
    :data:`MIRROR_SYMMETRY`."""
    return [axis for axis, score in enumerate(symmetry) if score >= MIRROR_SYMMETRY]


def full_augmentation(epochs: float) -> bool:
    """Whether a run of ``epochs`` passes over the training set gets the whole nnU-Net set."""
    return epochs >= FULL_AUGMENTATION_EPOCHS


def augmentation_2d(mirror_axes: Sequence[int], full: bool) -> list[dict[str, Any]]:
    """Albumentations specs for :class:`~segpipe.data.FolderDataModule` ``train_transforms``: flips of
    ``mirror_axes`` ((H, W) axes), and with ``full`` rotation/scaling, brightness/contrast and gamma."""
    flips = [{"name": FLIPS_2D[axis], "p": 0.5} for axis in sorted(mirror_axes, reverse=True)]
    if not full:
        return flips
    return [
        *flips,
        {"name": "Affine", "rotate": [-ROTATION_DEGREES, ROTATION_DEGREES], "scale": list(SCALE), "p": 0.2},
        {"name": "RandomBrightnessContrast", "brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.15},
        {"name": "RandomGamma", "gamma_limit": [70, 150], "p": 0.3},
    ]


def augmentation_3d(rotation_axes: Sequence[int], mirror_axes: Sequence[int], full: bool) -> list[dict[str, Any]]:
    """MONAI dictionary transform specs for :class:`~segpipe.data.VolumeDataModule` ``augmentation``:
    flips of ``mirror_axes``, and with ``full`` the rest of segpipe's nnU-Net set
    (:data:`~segpipe.transforms.augment3d.DEFAULT_3D_AUGMENTATION`: rotation, zoom, noise, blur, brightness,
    low resolution, gamma), rotating about ``rotation_axes`` only (about the coarse axis of anisotropic data,
    as nnU-Net's "dummy 2D" augmentation)."""
    entries = []
    for entry in (dict(e) for e in DEFAULT_3D_AUGMENTATION):
        if entry["name"] == "RandFlipd":
            if entry["spatial_axis"][0] in mirror_axes:
                entries.append(entry)
            continue
        if not full:
            continue
        if entry["name"] == "RandRotated":
            for axis in set(range(3)) - set(rotation_axes):
                entry[f"range_{'xyz'[axis]}"] = 0.0
        entries.append(entry)
    return entries


def augmentation_reason(mirror_axes: Sequence[int], symmetry: Sequence[float], epochs: float, full: bool) -> str:
    """One line: which axes are mirrored and why, and why the rest is or is not applied."""
    scores = ", ".join(f"axis {axis} {score:.2f}" for axis, score in enumerate(symmetry))
    mirrored = f"mirroring axes {list(mirror_axes)}" if mirror_axes else "no mirroring"
    why_mirror = f"mean label map vs its mirror image: {scores} (mirrored from {MIRROR_SYMMETRY})"
    if full:
        rest = f"{epochs:.0f} epochs (>= {FULL_AUGMENTATION_EPOCHS}): nnU-Net's whole set"
    else:
        rest = f"{epochs:.0f} epochs (< {FULL_AUGMENTATION_EPOCHS}): nothing else, a short run learns faster"
    return f"{mirrored} ({why_mirror}); {rest}"
