"""SegNet (Badrinarayanan, Kendall and Cipolla, IEEE TPAMI 2017) in 2D and 3D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segpipe.models.blocks import (
    ConvNormAct,
    MaxPoolWithIndices,
    MaxUnpool,
    Norm,
    VGGStage,
    conv_layer,
    init_he_,
    vgg_widths,
)


class SegNetEncoderStage(nn.Module):
    """VGG stage followed by 2x max pooling that keeps its indices.

    ``forward(x)`` with x (B, C_in, *S) returns ``(pooled, indices, S)``, pooled being
    (B, C_out, *ceil(S / 2)).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, num_convs: int, norm: Norm) -> None:
        super().__init__()
        self.convs = VGGStage(spatial_dims, in_channels, out_channels, num_convs, norm)
        self.pool = MaxPoolWithIndices(spatial_dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        return self.pool(self.convs(x))


class SegNetDecoderStage(nn.Module):
    """Max-unpooling with the encoder's indices, then ``num_convs`` 3x3 convolutions (mirror of the encoder).

    All convolutions keep ``in_channels`` except the last, which maps to ``out_channels``. For the
    first stage (``head=True``) the last convolution is the classifier: a plain 3x3 convolution with
    bias, without normalisation or ReLU, giving logits. Inputs x (B, C_in, *s), indices of the same
    shape and the size S to unpool to; output (B, C_out, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_convs: int,
        norm: Norm,
        head: bool = False,
    ) -> None:
        super().__init__()
        self.unpool = MaxUnpool(spatial_dims)
        layers: list[nn.Module] = [
            ConvNormAct(spatial_dims, in_channels, in_channels, norm=norm) for _ in range(num_convs - 1)
        ]
        if head:
            layers.append(conv_layer(spatial_dims)(in_channels, out_channels, kernel_size=3, padding=1))
        else:
            layers.append(ConvNormAct(spatial_dims, in_channels, out_channels, norm=norm))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: tuple[int, ...]) -> torch.Tensor:
        return self.convs(self.unpool(x, indices, output_size))


class SegNet(nn.Module):
    """Encoder-decoder that upsamples with the encoder's max-pooling indices; returns logits (B, K, *spatial).

    Input (B, ``in_channels``, H, W) or (B, ``in_channels``, D, H, W). The encoder is the 13
    convolutions of VGG16 with batch norm (stages of 2-2-3-3-3 3x3 convs, widths 64-128-256-512-512
    for ``base_channels=64``), each stage ending in a 2x2 max pooling whose argmax indices are kept.
    The decoder mirrors it: max-unpooling puts each value back where its max came from (zeros
    elsewhere, so no upsampling weights are learnt and boundaries stay sharp) and trainable
    convolutions densify the sparse maps; the last one is the classifier.

    With 3 input channels, 11 classes (CamVid) and the defaults this has 29,441,419 parameters, the
    paper's 29.5M (encoder 14.7M + mirrored decoder; VGG16's fully connected layers are dropped).
    Convolutions followed by a norm have no bias, which removes 7,936 parameters from the Caffe model.
    Pooling uses ``ceil_mode`` and unpooling restores the exact pre-pooling size, so any input size
    works without padding. Convolutions get He initialisation, as in the paper.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: input channels.
        num_classes: output channels, one logit per class including background.
        base_channels: width of the first stage (64 in the paper); stage widths double up to 8x.
        stage_convs: 3x3 convolutions per encoder stage (and per mirrored decoder stage); its length is
            the number of 2x downsamplings.
        norm: normalisation after every convolution but the classifier (``"batch"`` in the paper).

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or 3, an empty ``stage_convs`` or a stage with no
            convolution, a non-positive ``base_channels``, or an unknown ``norm``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 64,
        stage_convs: Sequence[int] = (2, 2, 3, 3, 3),
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        convs = list(stage_convs)
        if not convs or min(convs) < 1:
            raise ValueError(f"stage_convs must list >= 1 convolution per stage, got {convs}")
        widths = vgg_widths(base_channels, len(convs))
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width, n in zip(widths, convs, strict=True):
            self.encoder.append(SegNetEncoderStage(spatial_dims, channels, width, n, norm))
            channels = width
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(convs))):
            out = widths[i - 1] if i > 0 else num_classes
            self.decoder.append(SegNetDecoderStage(spatial_dims, widths[i], out, convs[i], norm, head=i == 0))
        init_he_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: list[tuple[torch.Tensor, tuple[int, ...]]] = []
        for stage in self.encoder:
            x, indices, size = stage(x)
            pooled.append((indices, size))
        for stage, (indices, size) in zip(self.decoder, reversed(pooled), strict=True):
            x = stage(x, indices, size)
        return x
