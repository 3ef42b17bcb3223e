"""Augmentation pipelines declared in YAML (albumentations for 2D images, MONAI for volumes) and intensity
normalisation."""

from segpipe.preprocessing.normalize import Normalization, apply_normalization, normalization_stats
from segpipe.transforms.augment import build_augmentations
from segpipe.transforms.augment3d import DEFAULT_3D_AUGMENTATION, build_augmentation, resolve_augmentation

__all__ = [
    "DEFAULT_3D_AUGMENTATION",
    "Normalization",
    "apply_normalization",
    "build_augmentation",
    "build_augmentations",
    "normalization_stats",
    "resolve_augmentation",
]
