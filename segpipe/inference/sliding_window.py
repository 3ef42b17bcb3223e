"""Whole-input inference: one pass, gaussian-blended sliding windows, or a 2D network slice by slice
over volumes; optionally averaged over flips (test-time augmentation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from segpipe.inference.tta import flip_averaged


@dataclass(frozen=True)
class WindowedInference:
    """How a network of ``spatial_dims`` dimensions is run over whole inputs.

    Args:
        spatial_dims: 2 or 3, the network's.
        roi: window size for MONAI's ``sliding_window_inference``; ``None`` runs the whole input at once.
        overlap: overlap between neighbouring windows (fraction of ``roi``).
        batch_size: windows per forward pass; for a 2D network on volumes, slices per pass.
        slice_axis: for a 2D network given volumes (B, C, X, Y, Z): the spatial axis (0, 1, 2) they are
            cut along.
    """

    spatial_dims: int
    roi: Sequence[int] | None = None
    overlap: float = 0.5
    batch_size: int = 4
    slice_axis: int = 2

    def logits(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *spatial) of ``net`` for ``image`` (B, C, *spatial) of any size."""
        if self.spatial_dims == 2 and image.ndim == 5:
            return self.slice_logits(net, image)
        if self.roi is None:
            return net(image)
        return sliding_window_inference(
            image,
            roi_size=list(self.roi),
            sw_batch_size=self.batch_size,
            predictor=net,
            overlap=self.overlap,
            mode="gaussian",
        )

    def slice_logits(self, net: nn.Module, volume: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, X, Y, Z) of a 2D network over volumes (B, C, X, Y, Z), slice by slice along
        ``slice_axis``: each slice goes through :meth:`logits`, ``batch_size`` slices at a time."""
        axis = 2 + self.slice_axis
        slices = volume.movedim(axis, 1)  # (B, S, C, H, W)
        batch, count = slices.shape[:2]
        flat = slices.reshape(batch * count, *slices.shape[2:])
        logits = torch.cat([self.logits(net, part) for part in flat.split(self.batch_size)])
        return logits.reshape(batch, count, *logits.shape[1:]).movedim(1, axis)

    def probabilities(self, net: nn.Module, image: torch.Tensor, tta_axes: Sequence[int] = ()) -> torch.Tensor:
        """Class probabilities (B, K, *spatial): softmax of :meth:`logits`, averaged over the flips of
        ``tta_axes`` (spatial axes, 0-based; empty: one pass)."""
        return flip_averaged(lambda x: self.logits(net, x).softmax(1), image, tta_axes)
