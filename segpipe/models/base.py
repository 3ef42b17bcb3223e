"""What every segpipe network shares: padding the input to a multiple of the network's stride, and
cropping the logits back, in one place (used by the networks and, through them, by export).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_stride(x: torch.Tensor, stride: int | Sequence[int]) -> torch.Tensor:
    """Zero-pad (B, C, *S) at the end of each spatial dim to the next multiple of ``stride``.

    ``stride`` is one value for every axis or one per spatial axis (networks that pool some axes less,
    for anisotropic volumes).

    The amounts are computed from ``x.shape``. While tracing or exporting, the input is always padded
    (possibly by zero), so the graph has no size-dependent branch and pads every input size correctly,
    not only the size it was traced with; in eager mode an input that already fits is returned as it is
    (no copy).

    Raises:
        ValueError: if a stride is < 1, or ``stride`` does not have one value per spatial axis.
    """
    strides = [stride] * (x.dim() - 2) if isinstance(stride, int) else list(stride)
    if len(strides) != x.dim() - 2:
        raise ValueError(f"stride {tuple(strides)} needs one value per spatial axis of an input {tuple(x.shape)}")
    if min(strides) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    pads: list[int] = []
    for dim in range(x.dim() - 1, 1, -1):
        axis_stride = strides[dim - 2]
        pads += [0, (axis_stride - x.shape[dim] % axis_stride) % axis_stride]
    if not _recording_graph() and not any(pads):
        return x
    return F.pad(x, pads)


def _recording_graph() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def crop_to(x: torch.Tensor, spatial_shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Crop the spatial dims of (B, C, *S') to ``spatial_shape`` from the start (inverse of :func:`pad_to_stride`)."""
    return x[(slice(None), slice(None), *(slice(0, s) for s in spatial_shape))]


class StridedNet(nn.Module, abc.ABC):
    """A network whose feature maps shrink by a total factor ``stride`` and that takes inputs of any size.

    :meth:`forward` zero-pads (B, C, *S) to a multiple of :attr:`stride`, runs :meth:`forward_padded` and
    crops its logits back to (B, K, *S). Subclasses set ``stride`` (one int, or one per spatial axis) and
    implement :meth:`forward_padded`.
    """

    stride: int | tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *S) for an input (B, C, *S) of any spatial size S."""
        return crop_to(self.forward_padded(pad_to_stride(x, self.stride)), x.shape[2:])

    @abc.abstractmethod
    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *S) for an input (B, C, *S) whose sizes S are multiples of :attr:`stride`."""
