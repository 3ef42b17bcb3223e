"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015) in 2D and 3D."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from segpipe.models.base import StridedNet, crop_to
from segpipe.models.blocks import (
    DoubleConv,
    Norm,
    Size,
    Upsample,
    UpsampleMode,
    conv_layer,
    max_pool_layer,
    reflect_pad,
    skip_join,
)


class UNet(StridedNet):
    """Encoder-decoder with skip connections by concatenation; returns logits (B, K, *spatial).

    With ``base_channels=64, depth=4, norm=None, padded=False`` this is the network of the paper
    (31.0M parameters for 1 input channel and 2 classes). The output always has the input's spatial
    size: padded networks pad to a multiple of :attr:`stride` (``2**depth``, or per axis the product of
    ``pool_sizes``) and crop back; unpadded ones mirror-pad the input (overlap-tile) so that the valid
    output covers the whole image.

    Args:
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
        in_channels: input channels (1 for a grayscale scan).
        num_classes: output channels, one logit per class including background.
        depth: number of 2x downsamplings.
        base_channels: filters at the first level; doubled at every level.
        norm: normalisation after each convolution (``None`` as in the paper).
        upsample: ``transpose`` (up-convolution) or ``interp`` (interpolation + 1x1 conv).
        padded: pad convolutions so that features keep their size (``False`` as in the paper).
        dropout: channel dropout at the end of the bottleneck.
        pool_sizes: per level (``depth`` entries), the pooling factor per axis, e.g.
            ``[[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]`` (nnU-Net's strides for a volume whose last
            axis is coarse); the decoder upsamples by the same factors. ``None``: 2 on every axis.
        kernel_sizes: per level and the bottleneck (``depth + 1`` entries), the odd convolution size per
            axis, e.g. ``[3, 3, 1]`` for the first levels of very anisotropic data. ``None``: 3 everywhere.

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or 3, ``depth < 1``, ``pool_sizes`` or
            ``kernel_sizes`` of the wrong length or with a bad size, or either with ``padded=False``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        base_channels: int = 64,
        norm: Norm = "batch",
        upsample: UpsampleMode = "transpose",
        padded: bool = True,
        dropout: float = 0.0,
        pool_sizes: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not padded and (pool_sizes is not None or kernel_sizes is not None):
            # The overlap-tile size search (output_size) assumes 2x pooling and 3x3 convolutions.
            raise ValueError("pool_sizes and kernel_sizes need padded=true (the unpadded U-Net pools 2x, 3x3 kernels)")
        self.spatial_dims = spatial_dims
        self.depth = depth
        pools: list[Size] = [2] * depth
        kernels: list[Size] = [3] * (depth + 1)
        if pool_sizes is not None:
            pools = per_level_sizes("pool_sizes", pool_sizes, depth, spatial_dims)
        if kernel_sizes is not None:
            kernels = per_level_sizes("kernel_sizes", kernel_sizes, depth + 1, spatial_dims, odd=True)
        self.stride = 2**depth if pool_sizes is None else total_stride(pools)
        self.padded = padded
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for w, kernel in zip(widths[:-1], kernels[:-1], strict=True):
            self.encoder.append(DoubleConv(spatial_dims, channels, w, norm, padded, kernel_size=kernel))
            channels = w
        self.pools = nn.ModuleList(max_pool_layer(spatial_dims)(pool) for pool in pools)
        self.bottleneck = DoubleConv(spatial_dims, channels, widths[-1], norm, padded, dropout, kernels[-1])
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level, w_in, w_out in zip(range(depth - 1, -1, -1), widths[:0:-1], widths[-2::-1], strict=True):
            self.ups.append(Upsample(spatial_dims, w_in, w_out, upsample, pools[level]))
            self.decoder.append(DoubleConv(spatial_dims, 2 * w_out, w_out, norm, padded, kernel_size=kernels[level]))
        self.head = conv_layer(spatial_dims)(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *S) for an input (B, C, *S) of any spatial size S."""
        if self.padded:
            return super().forward(x)
        shape = tuple(x.shape[2:])
        before, after = [], []
        for size in shape:
            n = self.valid_input_size(size)
            context = (n - self.output_size(n)) // 2
            before.append(context)
            after.append(n - size - context)
        return crop_to(self.forward_padded(reflect_pad(x, before, after)), shape)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for an input whose sizes are multiples of :attr:`stride` (padded) or valid sizes (unpadded)."""
        skips = []
        for block, pool in zip(self.encoder, self.pools, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.ups, self.decoder, reversed(skips), strict=True):
            x = block(skip_join(skip, up(x)))
        return self.head(x)

    def output_size(self, n: int) -> int:
        """Output size of the unpadded network for input size ``n`` (-1 when ``n`` is not valid)."""
        n = int(n)  # traced sizes are tensors, which `-=` below would change in place
        for _ in range(self.depth):
            n -= 4
            if n <= 0 or n % 2:
                return -1
            n //= 2
        n -= 4
        if n <= 0:
            return -1
        for _ in range(self.depth):
            n = 2 * n - 4
        return n

    def valid_input_size(self, size: int) -> int:
        """Smallest input size whose unpadded output covers ``size`` pixels."""
        n = int(size)  # a copy: `+=` on a traced size (a tensor) would change the input's shape in place
        while self.output_size(n) < size:
            n += 1
        return n


def per_level_sizes(
    name: str, sizes: Sequence[Sequence[int]], levels: int, spatial_dims: int, odd: bool = False
) -> list[Size]:
    """``sizes`` checked to hold ``levels`` entries of ``spatial_dims`` positive ints (odd ones if ``odd``).

    Raises:
        ValueError: naming the option, the bad entry and what was expected.
    """
    if isinstance(sizes, str | int) or len(sizes) != levels:
        raise ValueError(f"{name} needs {levels} entries (one per level), got {sizes!r}")
    checked: list[Size] = []
    for level, entry in enumerate(sizes):
        if isinstance(entry, str | int) or len(entry) != spatial_dims:
            raise ValueError(f"{name}[{level}] needs {spatial_dims} sizes (one per axis), got {entry!r}")
        if not all(isinstance(v, int) and v >= 1 and (v % 2 == 1 or not odd) for v in entry):
            kind = "odd ints >= 1" if odd else "ints >= 1"
            raise ValueError(f"{name}[{level}] must hold {kind}, got {entry!r}")
        checked.append(tuple(entry))
    return checked


def total_stride(pool_sizes: Sequence[Size]) -> tuple[int, ...]:
    """Per axis, the product of the pooling factors: the size multiple a padded U-Net needs."""
    return tuple(math.prod(axis) for axis in zip(*pool_sizes, strict=True))
