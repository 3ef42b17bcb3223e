"""Fully convolutional networks (Long, Shelhamer and Darrell, CVPR 2015) on a VGG16 backbone, 2D and 3D."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from segpipe.models.base import StridedNet
from segpipe.models.blocks import (
    Norm,
    VGGStage,
    conv_layer,
    conv_transpose_layer,
    dropout_layer,
    init_bilinear_,
    init_he_,
    max_pool_layer,
    vgg_widths,
)

FCNVariant = Literal["32s", "16s", "8s"]
_VGG16_STAGES = (2, 2, 3, 3, 3)
_STRIDE = 2 ** len(_VGG16_STAGES)


class BilinearUp(nn.Module):
    """Learned upsampling by ``factor``: a C -> C transposed convolution initialised to (bi/tri)linear.

    Kernel ``2 * factor``, stride ``factor``, padding ``factor // 2`` (even factors), no bias, so
    (B, C, *s) -> (B, C, *(factor * s)) exactly, the interpolation being centred on the input pixels.

    Raises:
        ValueError: if ``factor`` is not an even number >= 2.
    """

    def __init__(self, spatial_dims: int, channels: int, factor: int) -> None:
        super().__init__()
        if factor < 2 or factor % 2:
            raise ValueError(f"upsampling factor must be an even number >= 2, got {factor}")
        self.up = conv_transpose_layer(spatial_dims)(
            channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False
        )
        init_bilinear_(self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class FCNHead(nn.Sequential):
    """Convolutionalised VGG classifier: fc6 (k x k conv), ReLU, dropout, fc7 (1x1), ReLU, dropout, score.

    (B, C_in, *s) -> (B, num_classes, *s). fc6 is zero-padded by ``k // 2`` so the coarse map keeps its
    size (the original has no padding and pads the image by 100 instead).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        fc_channels: int,
        num_classes: int,
        fc_kernel: int,
        dropout: float,
    ) -> None:
        conv = conv_layer(spatial_dims)
        super().__init__(
            conv(in_channels, fc_channels, fc_kernel, padding=fc_kernel // 2),
            nn.ReLU(inplace=True),
            dropout_layer(spatial_dims, dropout),
            conv(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            dropout_layer(spatial_dims, dropout),
            conv(fc_channels, num_classes, 1),
        )


class FCN(StridedNet):
    """FCN-32s/16s/8s: VGG16 features, convolutionalised fc6/fc7, skip fusion; logits (B, K, *spatial).

    Input (B, ``in_channels``, H, W) or (B, ``in_channels``, D, H, W). The class scores of fc7 (stride
    32) are upsampled by learned transposed convolutions initialised to bilinear interpolation:
    ``"32s"`` in one 32x step; ``"16s"`` 2x, summed with 1x1 scores of pool4, then 16x; ``"8s"`` also
    fuses pool3 scores before a final 8x. As in the paper, every class-scoring layer starts at zero
    (so an untrained 8s network behaves like 32s, as with staged training); the VGG and fc
    convolutions get He initialisation, since they are trained here from scratch rather than from
    ImageNet weights.

    Any input size works: the input is zero-padded at the end to a multiple of 32 and the logits are
    cropped back. The original pads every image by 100 pixels and crops with offsets instead, which
    costs far more computation; with the padding moved here fc6 is padded by ``fc_kernel // 2``.

    With 3 input channels, 21 classes (PASCAL VOC) and the defaults, FCN-8s has 134,489,759
    parameters (the paper's 134M), FCN-16s 134,815,994 and FCN-32s 136,152,917 (its single 64x64
    upsampling kernel alone holds 21 x 21 x 64 x 64 = 1.8M weights, fixed in the original).

    Args:
        spatial_dims: 2 for images, 3 for volumes (use small ``fc_kernel``/``fc_channels`` in 3D).
        in_channels: input channels.
        num_classes: output channels, one logit per class including background.
        variant: ``"32s"``, ``"16s"`` or ``"8s"``: the finest skip that is fused.
        base_channels: width of the first VGG stage (64 in VGG16); widths double up to 8x.
        fc_channels: width of fc6 and fc7 (4096 in VGG16).
        fc_kernel: kernel of the convolutionalised fc6 (7: VGG16's 7x7 pool5 map); odd.
        dropout: dropout after fc6 and fc7 (0.5 as in VGG16).
        norm: normalisation after each VGG convolution (``None``: plain VGG16, as in the paper, which
            started from ImageNet weights; from scratch, and for narrow networks, ``"batch"`` trains far
            more reliably).

    Raises:
        ValueError: for an unknown ``variant`` or ``norm``, an even ``fc_kernel``, non-positive widths,
            or ``spatial_dims`` other than 2 or 3.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        variant: FCNVariant = "8s",
        base_channels: int = 64,
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        dropout: float = 0.5,
        norm: Norm = None,
    ) -> None:
        super().__init__()
        if variant not in ("32s", "16s", "8s"):
            raise ValueError(f"unknown FCN variant {variant!r}; choose '32s', '16s' or '8s'")
        if fc_kernel < 1 or fc_kernel % 2 == 0:
            raise ValueError(f"fc_kernel must be a positive odd number, got {fc_kernel}")
        if fc_channels < 1:
            raise ValueError(f"fc_channels must be >= 1, got {fc_channels}")
        self.variant = variant
        self.stride = _STRIDE
        widths = vgg_widths(base_channels, len(_VGG16_STAGES))
        self.stages = nn.ModuleList()
        channels = in_channels
        for width, n in zip(widths, _VGG16_STAGES, strict=True):
            self.stages.append(VGGStage(spatial_dims, channels, width, n, norm))
            channels = width
        self.pool = max_pool_layer(spatial_dims)(2)
        self.head = FCNHead(spatial_dims, channels, fc_channels, num_classes, fc_kernel, dropout)
        init_he_(self)
        conv = conv_layer(spatial_dims)
        scores: list[nn.Module] = [self.head[-1]]
        if variant == "32s":
            self.upscore = BilinearUp(spatial_dims, num_classes, 32)
        else:
            self.score_pool4 = conv(widths[3], num_classes, 1)
            self.upscore2 = BilinearUp(spatial_dims, num_classes, 2)
            scores.append(self.score_pool4)
        if variant == "16s":
            self.upscore = BilinearUp(spatial_dims, num_classes, 16)
        elif variant == "8s":
            self.score_pool3 = conv(widths[2], num_classes, 1)
            self.upscore_pool4 = BilinearUp(spatial_dims, num_classes, 2)
            self.upscore = BilinearUp(spatial_dims, num_classes, 8)
            scores.append(self.score_pool3)
        for score in scores:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *S) for S multiples of 32."""
        pools: list[torch.Tensor] = []
        for stage in self.stages:
            x = self.pool(stage(x))
            pools.append(x)
        score = self.head(x)
        if self.variant != "32s":
            score = self.upscore2(score) + self.score_pool4(pools[3])
        if self.variant == "8s":
            score = self.upscore_pool4(score) + self.score_pool3(pools[2])
        return self.upscore(score)


def _preset(variant: FCNVariant) -> Callable[..., FCN]:
    def build(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, **kwargs: object) -> FCN:
        return FCN(spatial_dims, in_channels, num_classes, variant=variant, **kwargs)  # type: ignore[arg-type]

    build.__name__ = build.__qualname__ = f"fcn{variant}"
    build.__doc__ = f"FCN-{variant}: :class:`FCN` with ``variant={variant!r}``; the other options are FCN's."
    # The signature (read by segpipe.models.registry.model_options) is FCN's without `variant`.
    fcn_signature = inspect.signature(FCN)
    build.__signature__ = fcn_signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in fcn_signature.parameters.values() if p.name != "variant"], return_annotation=FCN
    )
    return build


fcn32s = _preset("32s")
fcn16s = _preset("16s")
fcn8s = _preset("8s")
