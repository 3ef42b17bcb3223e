"""Accumulate the statistics of a dataset fingerprint one case at a time (2D images and volumes alike).

What nnU-Net's ``DatasetFingerprintExtractor`` and MONAI Auto3DSeg's ``DataAnalyzer`` collect: intensity
statistics of a seeded sample of foreground voxels (label > 0) and of whole images, per channel; voxel
counts per class; and the smallest structure of each class (its smallest per-case volume and its
smallest connected component).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from segpipe.preprocessing.fingerprint import SAMPLES_PER_CASE

PERCENTILES = (0.5, 99.5)
SYMMETRY_GRID = 32  # label maps are averaged on a grid of this many cells per axis


def intensity_summary(values: np.ndarray) -> dict[str, float]:
    """``{mean, std, median, p0_5, p99_5, min, max}`` of the 1D ``values`` (all 0 for none)."""
    if values.size == 0:
        return dict.fromkeys(("mean", "std", "median", "p0_5", "p99_5", "min", "max"), 0.0)
    low, high = np.percentile(values, PERCENTILES)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "p0_5": float(low),
        "p99_5": float(high),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def pooled_mean_std(counts: list[int], means: np.ndarray, variances: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and population std per channel of the pixels of several images, from each image's pixel count
    and per-channel mean and variance (N, C) (law of total variance, in float64: exact for 8-bit data)."""
    weights = np.asarray(counts, np.float64)[:, None] / sum(counts)
    mean = (weights * means).sum(axis=0)
    variance = (weights * (variances + (means - mean) ** 2)).sum(axis=0)
    return [float(m) for m in mean], [float(s) for s in np.sqrt(variance)]


@dataclass
class StatisticsAccumulator:
    """Feed it :meth:`add` per case; :meth:`result` gives the dataset's statistics."""

    num_classes: int = 2
    seed: int = 0
    samples_per_case: int = SAMPLES_PER_CASE
    _counts: list[int] = field(default_factory=list)
    _means: list[np.ndarray] = field(default_factory=list)
    _variances: list[np.ndarray] = field(default_factory=list)
    _foreground: list[np.ndarray] = field(default_factory=list)
    _case_foreground_means: list[np.ndarray] = field(default_factory=list)
    _class_voxels: np.ndarray | None = None
    _smallest_volume: list[int | None] = field(default_factory=list)
    _smallest_component: list[int | None] = field(default_factory=list)
    _smallest_volume_mm3: list[float | None] = field(default_factory=list)
    _smallest_component_mm3: list[float | None] = field(default_factory=list)
    _layout_sum: np.ndarray | None = None  # (K, *grid): per class, the cases' label maps on one grid

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._class_voxels = np.zeros(self.num_classes, np.int64)
        for smallest in self._smallest_lists():
            smallest.extend([None] * self.num_classes)

    def add(self, image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> None:
        """One case: ``image`` (C, *spatial), ``label`` (*spatial) integers in [0, num_classes), voxel
        ``spacing`` in mm (one value per spatial axis)."""
        pixels = image.reshape(image.shape[0], -1).astype(np.float64)
        self._counts.append(pixels.shape[1])
        self._means.append(pixels.mean(axis=1))
        self._variances.append(pixels.var(axis=1))
        flat = label.reshape(-1)
        foreground = np.flatnonzero(flat > 0)
        if foreground.size:
            self._case_foreground_means.append(pixels[:, foreground].mean(axis=1))
        if foreground.size > self.samples_per_case:
            foreground = self._rng.choice(foreground, self.samples_per_case, replace=False)
        self._foreground.append(pixels[:, foreground])
        counts = np.bincount(flat, minlength=self.num_classes)
        self._grow(len(counts))
        self._class_voxels += counts
        self._add_smallest(label, counts, float(np.prod(spacing)))
        self._add_layout(label)

    def _add_layout(self, label: np.ndarray) -> None:
        # Nearest-neighbour cells of a fixed grid: cases of any size add up to one map per class.
        centres = np.arange(SYMMETRY_GRID) + 0.5
        cells = [np.minimum((centres * n / SYMMETRY_GRID).astype(int), n - 1) for n in label.shape]
        grid = label[np.ix_(*cells)]
        one_hot = np.stack([grid == k for k in range(self.num_classes)]).astype(np.float64)
        if self._layout_sum is None:
            self._layout_sum = one_hot
        else:
            extra = self.num_classes - len(self._layout_sum)
            if extra > 0:
                self._layout_sum = np.concatenate([self._layout_sum, np.zeros((extra, *grid.shape))])
            self._layout_sum += one_hot

    def _grow(self, num_classes: int) -> None:
        """Make room for label values seen for the first time (datasets without a declared class count)."""
        extra = num_classes - self.num_classes
        if extra <= 0:
            return
        self._class_voxels = np.concatenate([self._class_voxels, np.zeros(extra, np.int64)])
        for smallest in self._smallest_lists():
            smallest.extend([None] * extra)
        self.num_classes = num_classes

    def _smallest_lists(self) -> tuple[list, ...]:
        return (
            self._smallest_volume,
            self._smallest_component,
            self._smallest_volume_mm3,
            self._smallest_component_mm3,
        )

    def _add_smallest(self, label: np.ndarray, counts: np.ndarray, voxel_mm3: float) -> None:
        for k in range(1, self.num_classes):
            if counts[k] == 0:
                continue
            components, _ = ndimage.label(label == k)
            component = int(np.bincount(components.reshape(-1))[1:].min())
            if self._smallest_volume[k] is None or counts[k] < self._smallest_volume[k]:
                self._smallest_volume[k] = int(counts[k])
                self._smallest_volume_mm3[k] = float(counts[k]) * voxel_mm3
            if self._smallest_component[k] is None or component < self._smallest_component[k]:
                self._smallest_component[k] = component
                self._smallest_component_mm3[k] = component * voxel_mm3

    def result(self) -> dict[str, object]:
        """The statistics (plain data): ``image_mean``/``image_std`` (C,) over every voxel,
        ``foreground_intensity`` (one :func:`intensity_summary` per channel), ``class_fraction`` (K,),
        ``smallest_*`` (K,, None for background and absent classes), ``foreground_mean_spread``: the
        coefficient of variation of the cases' foreground means (per channel; small when the images share
        one intensity scale), ``mirror_symmetry`` (per spatial axis, see :func:`mirror_symmetry`).

        Raises:
            ValueError: when no case was added.
        """
        if not self._counts:
            raise ValueError("no case to compute statistics from")
        mean, std = pooled_mean_std(self._counts, np.stack(self._means), np.stack(self._variances))
        foreground = np.concatenate(self._foreground, axis=1)
        case_means = np.stack(self._case_foreground_means) if self._case_foreground_means else np.zeros((1, len(mean)))
        spread = case_means.std(axis=0) / np.maximum(np.abs(case_means.mean(axis=0)), 1e-8)
        total = max(int(self._class_voxels.sum()), 1)
        return {
            "image_mean": mean,
            "image_std": std,
            "foreground_intensity": [intensity_summary(channel) for channel in foreground],
            "foreground_mean_spread": [float(s) for s in spread],
            "class_fraction": [float(c) / total for c in self._class_voxels],
            "smallest_class_voxels": self._smallest_volume,
            "smallest_class_mm3": self._smallest_volume_mm3,
            "smallest_component_voxels": self._smallest_component,
            "smallest_component_mm3": self._smallest_component_mm3,
            "mirror_symmetry": mirror_symmetry(self._layout_sum, self._class_voxels),
        }


def mirror_symmetry(layout: np.ndarray, class_voxels: np.ndarray) -> list[float]:
    """Per spatial axis, how much the dataset's mean label map overlaps its mirror image along that axis:
    for each foreground class ``sum(min(m, flip(m))) / sum(m)`` of its mean map ``m``, weighted by the
    class's voxels. 1: mirroring along the axis gives images like the dataset's (left-right in brains,
    every axis where anatomy lies anywhere); lower: the axis has a direction (anterior-posterior).

    Args:
        layout: (K, *grid) summed one-hot label maps of the cases on one grid.
        class_voxels: (K,) voxels per class, the weights.
    """
    weights = np.asarray(class_voxels[1:], np.float64)
    maps = layout[1 : len(weights) + 1]
    if weights.sum() == 0:
        return [1.0] * (layout.ndim - 1)
    scores = []
    for axis in range(1, layout.ndim):
        overlap = np.minimum(maps, np.flip(maps, axis=axis)).reshape(len(maps), -1).sum(axis=1)
        totals = maps.reshape(len(maps), -1).sum(axis=1)
        per_class = np.divide(overlap, totals, out=np.ones_like(overlap), where=totals > 0)
        scores.append(float((per_class * weights).sum() / weights.sum()))
    return scores
