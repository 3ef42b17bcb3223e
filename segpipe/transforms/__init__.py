"""Augmentation pipelines (albumentations, declared in YAML) and intensity normalisation."""

from segpipe.transforms.augment import build_augmentations
from segpipe.transforms.normalize import Normalization, apply_normalization, normalization_stats

__all__ = ["Normalization", "apply_normalization", "build_augmentations", "normalization_stats"]
