"""Flip test-time augmentation: average class probabilities over mirrored copies of the input (nnU-Net).

The passes are accumulated one at a time into the first pass's tensor, so the peak is one pass plus the
accumulator (and one slab of the flipped-back pass), on the device and in the dtype ``predict`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch

# Spatial slabs of the first axis added at a time: a flipped-back copy never exists whole.
SLAB_DEPTH = 16


def tta_axes(tta: bool | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """The spatial axes (0-based, of (X, Y[, Z])) to mirror: all for ``True``, none for ``False``.

    Raises:
        ValueError: for axes outside 0..spatial_dims-1 or repeated axes.
    """
    if isinstance(tta, bool):
        return tuple(range(spatial_dims)) if tta else ()
    axes = tuple(int(a) for a in tta)
    if len(set(axes)) != len(axes) or any(not 0 <= a < spatial_dims for a in axes):
        raise ValueError(f"tta axes must be distinct spatial axes in 0..{spatial_dims - 1}, got {list(tta)}")
    return axes


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes``, the empty one (no flip) first: 2**len(axes) mirrorings."""
    return [combo for size in range(len(axes) + 1) for combo in combinations(axes, size)]


def add_flipped_(total: torch.Tensor, part: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``total += part.flip(dims)`` in place, slab by slab along dim 2, so that no whole flipped copy of
    ``part`` is made; ``part`` may be on another device or dtype (each slab is converted to ``total``'s).

    Args:
        total: (B, K, *spatial) accumulator.
        part: a tensor of the same shape.
        dims: tensor dims (>= 2) to flip.
    """
    length = total.shape[2]
    for start in range(0, length, SLAB_DEPTH):
        stop = min(start + SLAB_DEPTH, length)
        # flip(part)[start:stop] along dim 2 is part[length - stop : length - start] flipped
        source = slice(length - stop, length - start) if 2 in dims else slice(start, stop)
        slab = part[:, :, source]
        total[:, :, start:stop] += (slab.flip(list(dims)) if dims else slab).to(total)
    return total


def flip_averaged(
    predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, axes: Sequence[int]
) -> torch.Tensor:
    """Mean over the mirrorings of ``axes`` of ``predict(flipped image)``, each flipped back.

    The first (unflipped) pass is the accumulator: each further pass is added into it and then freed.

    Args:
        predict: (B, C, *spatial) -> (B, K, *spatial), e.g. softmax probabilities; the result has its
            device and dtype.
        image: (B, C, *spatial).
        axes: spatial axes to mirror (0 is the first spatial axis); empty: ``predict(image)``.
    """
    flips = flip_combinations(axes)
    total = predict(image)  # flips[0]: the identity
    for combo in flips[1:]:
        dims = [2 + a for a in combo]
        add_flipped_(total, predict(image.flip(dims)), dims)
    return total.div_(len(flips)) if len(flips) > 1 else total
