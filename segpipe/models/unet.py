"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015) in 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn

from segpipe.models.base import StridedNet, crop_to
from segpipe.models.blocks import (
    DoubleConv,
    Norm,
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
    size: padded networks pad to a multiple of ``2**depth`` and crop back; unpadded ones mirror-pad the
    input (overlap-tile) so that the valid output covers the whole image.

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

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or 3, or ``depth < 1``.
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
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.stride = 2**depth
        self.padded = padded
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for w in widths[:-1]:
            self.encoder.append(DoubleConv(spatial_dims, channels, w, norm, padded))
            channels = w
        self.pool = max_pool_layer(spatial_dims)(2)
        self.bottleneck = DoubleConv(spatial_dims, channels, widths[-1], norm, padded, dropout)
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w_in, w_out in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.ups.append(Upsample(spatial_dims, w_in, w_out, upsample))
            self.decoder.append(DoubleConv(spatial_dims, 2 * w_out, w_out, norm, padded))
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
        """Logits for an input whose sizes are multiples of ``2**depth`` (padded) or valid sizes (unpadded)."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
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
