"""Target spacing, per-axis pooling and patch size: nnU-Net v2's rules (``default_experiment_planner.py``:
``determine_fullres_target_spacing``, ``get_pool_and_conv_props``, the patch-shrinking loop), adapted to
segpipe's networks, whose every level halves the axes it pools.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

MIN_FEATURE_MAP = 4  # voxels every axis keeps at the bottleneck (nnU-Net's minimum feature map size)
MAX_POOLINGS = 5  # nnU-Net's cap on 2x poolings per axis in 3D; also the depth of segpipe's 2D demo U-Net + 1
# On a CPU a fifth level costs time a short run needs for steps: the 2D demo's U-Net at depth 4 reached the
# test Dice of depth 5 (0.944 both, 7 epochs) in 0.79x the time (docs/benchmarks.md).
CPU_MAX_POOLINGS = 4
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net: an axis this many times coarser than the others is the anisotropic one


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> tuple[list[float], str]:
    """The spacing every case is resampled to, and why: the per-axis median; for an axis more than
    :data:`ANISOTROPY_THRESHOLD` times coarser than the others whose median size is also under a third of
    theirs, its 10th percentile (but at least the others' spacing), so that few cases are upsampled
    along it (nnU-Net v2's ``determine_fullres_target_spacing``).
    """
    spacing = np.median(np.asarray(spacings, np.float64), axis=0)
    sizes = np.median(np.asarray(shapes, np.float64) * np.asarray(spacings) / spacing, axis=0)
    worst = int(np.argmax(spacing))
    others = [axis for axis in range(len(spacing)) if axis != worst]
    anisotropic = spacing[worst] > ANISOTROPY_THRESHOLD * max(spacing[others])
    thin = sizes[worst] * ANISOTROPY_THRESHOLD < min(sizes[others])
    if anisotropic and thin:
        percentile = float(np.percentile(np.asarray(spacings)[:, worst], 10))
        spacing[worst] = max(percentile, float(max(spacing[others])) + 1e-5)
        return [float(s) for s in spacing], f"median spacing; axis {worst} anisotropic: its 10th percentile (nnU-Net)"
    return [float(s) for s in spacing], "median spacing of the training cases (nnU-Net)"


def resampled_shape(
    shapes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float]], spacing: Sequence[float]
) -> list[float]:
    """Median case shape (voxels) after resampling every case to ``spacing``."""
    scaled = np.asarray(shapes, np.float64) * np.asarray(spacings, np.float64) / np.asarray(spacing, np.float64)
    return [float(s) for s in np.median(scaled, axis=0)]


def pooling(spacing: Sequence[float], patch: Sequence[int], max_poolings: int = MAX_POOLINGS) -> list[list[int]]:
    """Per level, the pooling factor (1 or 2) of each axis (nnU-Net's ``get_pool_and_conv_props``): an axis
    is pooled at a level while its current spacing is under twice the finest current spacing (so a coarse
    axis waits until the fine ones have caught up) and it keeps at least :data:`MIN_FEATURE_MAP` voxels.
    """
    current_spacing = [float(s) for s in spacing]
    size = [float(s) for s in patch]
    levels: list[list[int]] = []
    while len(levels) < max_poolings:
        finest = min(current_spacing)
        pooled = [
            2 if current_spacing[a] < 2 * finest and size[a] >= 2 * MIN_FEATURE_MAP else 1 for a in range(len(size))
        ]
        if 2 not in pooled:
            break
        for axis, factor in enumerate(pooled):
            current_spacing[axis] *= factor
            size[axis] /= factor
        levels.append(pooled)
    return levels


def strides(levels: Sequence[Sequence[int]], dims: int) -> list[int]:
    """The total downsampling of each axis: the product of its pooling factors."""
    return [math.prod(level[axis] for level in levels) for axis in range(dims)]


def fit_patch(
    median_shape: Sequence[float],
    spacing: Sequence[float],
    fits: Callable[[list[int], list[list[int]]], bool],
    max_poolings: int = MAX_POOLINGS,
) -> tuple[list[int], list[list[int]]]:
    """The largest patch, starting from ``median_shape``, that ``fits(patch, pooling)`` (the memory
    budget) accepts, with its pooling: the axis with the largest patch/median ratio shrinks by its
    stride until it fits (nnU-Net). Every axis is rounded up to a multiple of its stride; at most
    ``max_poolings`` levels.

    Raises:
        ValueError: when not even the smallest patch fits.
    """
    patch = [max(round(s), 1) for s in median_shape]
    while True:
        levels = pooling(spacing, patch, max_poolings)
        stride = strides(levels, len(patch))
        patch = [stride[a] * math.ceil(patch[a] / stride[a]) for a in range(len(patch))]  # padded up, as nnU-Net
        if fits(patch, levels):
            return patch, levels
        ratios = [patch[a] / median_shape[a] for a in range(len(patch))]
        smallest = 2 * MIN_FEATURE_MAP  # one pooling still leaves the minimum feature map
        shrinkable = [a for a in range(len(patch)) if patch[a] > smallest]
        if not shrinkable:
            raise ValueError(f"no patch of at least {smallest} voxels per axis fits the memory budget")
        axis = max(shrinkable, key=lambda a: ratios[a])
        patch[axis] = max(patch[axis] - stride[axis], smallest)


def is_anisotropic_pooling(levels: Sequence[Sequence[int]]) -> bool:
    """Whether some level pools only some axes."""
    return any(1 in level for level in levels)
