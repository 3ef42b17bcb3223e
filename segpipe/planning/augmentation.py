"""Training augmentation of a plan: nnU-Net v2's set (``nnUNetTrainer.get_training_transforms``: rotation and
scaling p=0.2, Gaussian noise p=0.1, brightness/contrast p=0.15, gamma p=0.3, mirroring of every axis),
written as the DataModules take it: albumentations specs for 2D folders, MONAI dictionary transform specs
for volumes."""

from __future__ import annotations

import math
from typing import Any

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
    """MONAI dictionary transform specs (``{name, prob, ...}``, MONAI's names and arguments) for volumes:
    rotation about ``rotation_axes`` only (about the coarse axis of anisotropic data, as nnU-Net's
    "dummy 2D" augmentation), zoom, noise, gamma and mirroring of each axis."""
    radians = math.radians(30)
    ranges = {f"range_{'xyz'[axis]}": radians for axis in rotation_axes}
    return [
        {"name": "RandRotated", "prob": 0.2, **ranges, "keep_size": True},
        {"name": "RandZoomd", "prob": 0.2, "min_zoom": SCALE[0], "max_zoom": SCALE[1], "keep_size": True},
        {"name": "RandGaussianNoised", "prob": 0.1, "std": 0.1},
        {"name": "RandAdjustContrastd", "prob": 0.3, "gamma": [0.7, 1.5]},
        *({"name": "RandFlipd", "prob": 0.5, "spatial_axis": axis} for axis in range(3)),
    ]
