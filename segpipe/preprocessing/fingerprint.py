"""Dataset fingerprint (as nnU-Net's): statistics of the training cases that preprocessing depends on.

- :func:`median_spacing`: the per-axis median voxel size, from the file headers only;
- :func:`foreground_intensity_statistics`: CT clipping percentiles, mean and standard deviation of the
  intensities of foreground voxels (label > 0), sampled from every training case.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.data.sources.layouts import VolumeCase
from segpipe.data.sources.volume_cases import load_case
from segpipe.errors import DataError
from segpipe.io.volumes import read_geometry
from segpipe.preprocessing.geometry import oriented_axes

# Foreground voxels sampled per case and channel for intensity statistics (nnU-Net's number).
SAMPLES_PER_CASE = 10_000


def median_spacing(cases: Sequence[VolumeCase], orientation: str | None) -> list[float]:
    """Median voxel size (3,) in mm over ``cases``, along the axes as reoriented to ``orientation``
    (voxel order for ``None``), read from the headers of each case's first image file.

    Raises:
        ValueError: for no cases.
        DataError: naming a file whose header cannot be read.
    """
    if not cases:
        raise ValueError("the median spacing needs at least one case")
    spacings = []
    for case in cases:
        _, meta = read_geometry(case.images[0])
        spacing = np.empty(3)
        spacing[oriented_axes(meta.affine, orientation)] = meta.spacing
        spacings.append(spacing)
    return [float(s) for s in np.median(spacings, axis=0)]


def foreground_intensity_statistics(
    cases: Sequence[VolumeCase],
    percentiles: Sequence[float] | None = None,
    window: Sequence[float] | None = None,
    samples_per_case: int = SAMPLES_PER_CASE,
    seed: int = 0,
) -> dict[str, Any]:
    """Intensity statistics of the foreground voxels (label > 0) of ``cases``, per channel.

    Up to ``samples_per_case`` foreground voxels are drawn from each case (seeded) and pooled. The
    clipping window is their ``percentiles`` (e.g. ``[0.5, 99.5]``), or ``window`` as given; the mean and
    standard deviation are those of the pooled samples clipped to it (std at least 1e-8).

    Returns:
        ``{"ct_clip": [[lo, hi], ...], "ct_mean": [...], "ct_std": [...]}``, one entry per channel.

    Raises:
        ValueError: without exactly one of ``percentiles`` and ``window``.
        DataError: when a case cannot be read, or no case has foreground voxels.
    """
    if (percentiles is None) == (window is None):
        raise ValueError("give one of percentiles or window")
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    for case in cases:
        image, label, _ = load_case(case)
        if label is None:
            continue
        foreground = np.flatnonzero(label > 0)
        if foreground.size > samples_per_case:
            foreground = rng.choice(foreground, samples_per_case, replace=False)
        samples.append(image.reshape(image.shape[0], -1)[:, foreground].astype(np.float64))
    pooled = np.concatenate(samples, axis=1) if samples else np.empty((0, 0))
    if pooled.size == 0:
        where = (cases[0].label or cases[0].images[0]) if cases else Path(".")
        raise DataError(where, "no training case has foreground voxels (label > 0) for the CT intensity statistics")
    if percentiles is not None:
        clip = np.percentile(pooled, list(percentiles), axis=1).T
    else:
        clip = np.tile(np.asarray(window, np.float64), (pooled.shape[0], 1))
    clipped = np.clip(pooled, clip[:, :1], clip[:, 1:])
    return {
        "ct_clip": clip.tolist(),
        "ct_mean": clipped.mean(axis=1).tolist(),
        "ct_std": np.maximum(clipped.std(axis=1), 1e-8).tolist(),
    }
