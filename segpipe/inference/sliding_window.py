"""Whole-input inference: one pass, gaussian-blended sliding windows, or a 2D network slice by slice
over volumes; optionally averaged over flips (test-time augmentation).

Memory (``segpipe predict`` of large volumes): the windows run on ``sw_device`` (default: the input's,
i.e. the network's) while the whole-volume logits are stitched on ``device`` (e.g. ``cpu`` while the
network runs on a GPU), in ``dtype``. ``auto`` stitches in float16 on a CUDA device and in float32
elsewhere, so that CPU runs keep their exact masks (float16 is an explicit choice there; measured figures
in docs/deployment.md). Softmax then runs in place, slab by slab, and flip TTA adds each pass into one
accumulator (:func:`segpipe.inference.tta.flip_averaged`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from monai.inferers import sliding_window_inference

from segpipe.inference.tta import SLAB_DEPTH, flip_averaged

StitchDtype = Literal["auto", "float32", "float16"]
STITCH_DTYPES: tuple[str, ...] = get_args(StitchDtype)
# a network, or anything mapping (B, C, *spatial) tensors to logits (B, K, *spatial): an ONNX Runtime session
Predictor = Callable[[torch.Tensor], torch.Tensor]


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 of (B, K, *spatial) in place, slab by slab along dim 2 (each slab computed in
    float32), so that no second whole-volume tensor is allocated."""
    for start in range(0, logits.shape[2], SLAB_DEPTH):
        slab = logits[:, :, start : start + SLAB_DEPTH]
        slab.copy_(slab.float().softmax(1))
    return logits


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
        sw_device: device the windows run on (MONAI's ``sw_device``); ``None``: the input's.
        device: device the probabilities are stitched and averaged on (MONAI's ``device``); ``None``: the
            input's.
        dtype: dtype of the stitched probabilities: ``float32``, ``float16`` or ``auto`` (float16 when
            stitching on CUDA, else float32).

    Raises:
        ValueError: for a ``dtype`` not in :data:`STITCH_DTYPES`.
    """

    spatial_dims: int
    roi: Sequence[int] | None = None
    overlap: float = 0.5
    batch_size: int = 4
    slice_axis: int = 2
    sw_device: str | None = None
    device: str | None = None
    dtype: StitchDtype = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in STITCH_DTYPES:
            raise ValueError(f"inference dtype must be one of {', '.join(STITCH_DTYPES)}, got {self.dtype!r}")

    def logits(self, net: Predictor, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *spatial), float32 on the input's device, of ``net`` for ``image`` (B, C, *spatial)
        of any size (validation and test: the loss and metrics take them beside the labels)."""
        return self._logits(net, image, image.device, torch.float32)

    def stitch_device(self, image: torch.Tensor) -> torch.device:
        """Where :meth:`probabilities` are stitched and returned for ``image``."""
        return torch.device(self.device) if self.device is not None else image.device

    def stitch_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype of :meth:`probabilities` stitched on ``device`` (``auto``: float16 on CUDA only)."""
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    def probabilities(self, net: Predictor, image: torch.Tensor, tta_axes: Sequence[int] = ()) -> torch.Tensor:
        """Class probabilities (B, K, *spatial) on :meth:`stitch_device` in :meth:`stitch_dtype`: softmax
        of the stitched logits, averaged over the flips of ``tta_axes`` (spatial axes, 0-based; empty: one
        pass) one pass at a time. For a 2D network on volumes the axes are the slice's (0, 1: the volume's
        axes other than ``slice_axis``, in order)."""
        device = self.stitch_device(image)
        dtype = self.stitch_dtype(device)
        if self.spatial_dims == 2 and image.ndim == 5:
            in_plane = [axis for axis in range(3) if axis != self.slice_axis]
            tta_axes = [in_plane[axis] for axis in tta_axes]
        return flip_averaged(lambda x: softmax_(self._logits(net, x, device, dtype)), image, tta_axes)

    def _logits(self, net: Predictor, image: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self.spatial_dims == 2 and image.ndim == 5:
            return self._slice_logits(net, image, device, dtype)
        if self.roi is None:
            return net(image.to(self.sw_device or image.device)).to(device, dtype)
        # MONAI stitches in the input's dtype: a float16 buffer needs a float16 input, and each window is
        # given back to the network in the input's own dtype.
        source = image.dtype
        return sliding_window_inference(
            image.to(dtype),
            roi_size=list(self.roi),
            sw_batch_size=self.batch_size,
            predictor=lambda window: net(window.to(source)),
            overlap=self.overlap,
            mode="gaussian",
            sw_device=self.sw_device,
            device=device,
        )

    def _slice_logits(
        self,
        net: Predictor,
        volume: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Logits (B, K, X, Y, Z) of a 2D network over volumes (B, C, X, Y, Z), slice by slice along
        ``slice_axis``: ``batch_size`` slices at a time, each part moved to ``device`` as it is done."""
        axis = 2 + self.slice_axis
        slices = volume.movedim(axis, 1)  # (B, S, C, H, W)
        batch, count = slices.shape[:2]
        flat = slices.reshape(batch * count, *slices.shape[2:])
        logits = torch.cat([self._logits(net, part, device, dtype) for part in flat.split(self.batch_size)])
        return logits.reshape(batch, count, *logits.shape[1:]).movedim(1, axis)
