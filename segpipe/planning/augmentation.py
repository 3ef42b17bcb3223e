"""Training augmentation of a plan: nnU-Net v2's set (``nnUNetTrainer.get_training_transforms``: rotation and
scaling p=0.2, Gaussian noise p=0.1, brightness/contrast p=0.15, gamma p=0.3, mirroring of every axis),
written as the DataModules take it: albumentations specs for 2D folders, MONAI dictionary transform specs
for volumes."""

from __future__ import annotations

from typing import Any

from segpipe.transforms.augment3d import DEFAULT_3D_AUGMENTATION

ROTATION_DEGREES = 15  # nnU-Net rotates 2D by up to 180 degrees; anatomy in fixed orientation gains little
SCALE = (0.85, 1.25)  # nnU-Net's scaling range


def augmentation_2d() -> list[dict[str, Any]]:
    """Albumentations specs for :class:`~segpipe.data.FolderDataModule` ``train_transforms``."""
    return [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "VerticalFlip", "p": 0.5},
        {"name": "Affine", "rotate": [-ROTATION_DEGREES, ROTATION_DEGREES], "scale": list(SCALE), "p": 0.2},
        {"name": "RandomBrightnessContrast", "brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.15},
        {"name": "RandomGamma", "gamma_limit": [70, 150], "p": 0.3},
    ]


def augmentation_3d(rotation_axes: list[int]) -> list[dict[str, Any]]:
    """MONAI dictionary transform specs for :class:`~segpipe.data.VolumeDataModule` ``augmentation``:
    segpipe's nnU-Net set (:data:`~segpipe.transforms.augment3d.DEFAULT_3D_AUGMENTATION`: rotation, zoom,
    noise, blur, brightness, low resolution, gamma, mirroring of each axis), rotating about
    ``rotation_axes`` only (about the coarse axis of anisotropic data, as nnU-Net's "dummy 2D" augmentation)."""
    entries = [dict(entry) for entry in DEFAULT_3D_AUGMENTATION]
    for entry in entries:
        if entry["name"] == "RandRotated":
            for axis in set(range(3)) - set(rotation_axes):
                entry[f"range_{'xyz'[axis]}"] = 0.0
    return entries
