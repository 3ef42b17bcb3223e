"""Intensity normalisation with statistics taken from the whole image, before any crop.

Statistics come from the full image as read (so a random crop is normalised exactly like the same
pixels seen whole at validation time), and are applied after augmentation, so intensity
augmentations still act on the stored pixel type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

Normalization = Literal["zscore", "minmax", "fixed", "none", "dataset"]


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
    ``dataset``: as ``fixed``, with the ``mean`` and ``std`` the DataModule computed from the training
    split (:func:`pixel_statistics`).
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
    if mode in ("fixed", "dataset"):
        if mean is None or std is None:
            raise ValueError(f"normalization {mode!r} needs 'mean' and 'std' in the data config")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for an image with {channels} channels")
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)
    raise ValueError(f"unknown normalization {mode!r}; choose 'zscore', 'minmax', 'fixed', 'dataset' or 'none'")


def apply_normalization(image: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(image - shift) / scale`` as float32, broadcasting over the last (channel) axis."""
    return (image.astype(np.float32) - shift) / scale


def pixel_statistics(images: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of every pixel of ``images`` (each (H, W) or
    (H, W, C)), pooled as if all pixels were one array: the ``dataset`` normalisation's statistics.

    Each image contributes its pixel count, mean and variance in float64, combined by the law of total
    variance, so the result does not depend on how large the images are and stays exact for 8-bit data.
    The same files in the same order give the same numbers on every process.

    Raises:
        ValueError: for no images, or images with different channel counts.
    """
    counts, means, variances = [], [], []
    for image in images:
        pixels = np.asarray(image, np.float64).reshape(-1, image.shape[-1] if image.ndim == 3 else 1)
        if means and pixels.shape[1] != means[0].shape[0]:
            raise ValueError(f"images have {means[0].shape[0]} and {pixels.shape[1]} channels")
        counts.append(pixels.shape[0])
        means.append(pixels.mean(axis=0))
        variances.append(pixels.var(axis=0))
    if not counts:
        raise ValueError("no images to compute the dataset mean and std from")
    weights = np.asarray(counts, np.float64)[:, None] / sum(counts)
    mean = (weights * np.stack(means)).sum(axis=0)
    variance = (weights * (np.stack(variances) + (np.stack(means) - mean) ** 2)).sum(axis=0)
    return [float(m) for m in mean], [float(max(s, 1e-8)) for s in np.sqrt(variance)]
