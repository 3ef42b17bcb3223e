"""Flip test-time augmentation: average class probabilities over mirrored copies of the input (nnU-Net)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch


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


def flip_averaged(
    predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, axes: Sequence[int]
) -> torch.Tensor:
    """Mean over the mirrorings of ``axes`` of ``predict(flipped image)``, each flipped back.

    Args:
        predict: (B, C, *spatial) -> (B, K, *spatial), e.g. softmax probabilities.
        image: (B, C, *spatial).
        axes: spatial axes to mirror (0 is the first spatial axis); empty: ``predict(image)``.
    """
    flips = flip_combinations(axes)
    total = predict(image)  # flips[0]: the identity
    for combo in flips[1:]:
        dims = [2 + a for a in combo]
        total = total + predict(image.flip(dims)).flip(dims)
    return total / len(flips)
