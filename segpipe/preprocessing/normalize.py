"""Intensity normalisation with statistics taken from the whole image, before any crop.

Statistics come from the full image as read (so a random crop is normalised exactly like the same
pixels seen whole at validation time), and are applied after augmentation, so intensity
augmentations still act on the stored pixel type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Normalization = Literal["zscore", "minmax", "fixed", "none"]


def normalization_stats(
    image: np.ndarray,
    mode: Normalization = "zscore",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(shift, scale)`` for an (H, W, C) image, so that ``(x - shift) / scale`` is normalised.

    ``zscore``: per image and channel, zero mean and unit variance (nnU-Net's MR scheme).
    ``minmax``: per image and channel, scaled to [0, 1].
    ``fixed``: dataset statistics ``mean`` and ``std`` from the config.
    ``none``: identity.

    Raises:
        ValueError: for an unknown mode, or ``fixed`` without ``mean`` and ``std``.
    """
    channels = image.shape[-1]
    axes = tuple(range(image.ndim - 1))
    if mode == "none":
        return np.zeros(channels, np.float32), np.ones(channels, np.float32)
    if mode == "zscore":
        x = image.astype(np.float64)
        return x.mean(axis=axes).astype(np.float32), np.maximum(x.std(axis=axes), 1e-8).astype(np.float32)
    if mode == "minmax":
        lo = image.min(axis=axes).astype(np.float32)
        hi = image.max(axis=axes).astype(np.float32)
        return lo, np.maximum(hi - lo, 1e-8)
    if mode == "fixed":
        if mean is None or std is None:
            raise ValueError("normalization 'fixed' needs 'mean' and 'std' in the data config")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for an image with {channels} channels")
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)
    raise ValueError(f"unknown normalization {mode!r}; choose 'zscore', 'minmax', 'fixed' or 'none'")


def apply_normalization(image: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(image - shift) / scale`` as float32, broadcasting over the last (channel) axis."""
    return (image.astype(np.float32) - shift) / scale
