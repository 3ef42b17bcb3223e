"""Augmentation pipelines (albumentations, declared in YAML) and intensity normalisation."""

from segpipe.preprocessing.normalize import Normalization, apply_normalization, normalization_stats
from segpipe.transforms.augment import build_augmentations

__all__ = ["Normalization", "apply_normalization", "build_augmentations", "normalization_stats"]
