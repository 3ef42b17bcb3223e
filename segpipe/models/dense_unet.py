"""Dense U-Nets: DenseNet encoders with a U-Net decoder, in 2D and 3D.

* FC-DenseNet ("The One Hundred Layers Tiramisu", Jégou et al., CVPR-W 2017): dense blocks and
  transitions down, a bottleneck dense block, then transposed convolutions of the *new* feature maps
  only, concatenated with the skip and refined by another dense block.
* 2D DenseUNet of H-DenseUNet (Li et al., IEEE TMI 2018, arXiv 2017): a DenseNet encoder with a
  convolutional U-Net decoder (upsample, join the skip, convolve), ``decoder="conv"`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from segpipe.models.base import crop_to
from segpipe.models.blocks import (
    DenseBlock,
    DoubleConv,
    Norm,
    TransitionDown,
    TransitionUp,
    Upsample,
    UpsampleMode,
    conv_layer,
    init_he_,
    skip_join,
)

DenseDecoder = Literal["dense", "conv"]


class DenseUpLevel(nn.Module):
    """One decoder level: upsample x, crop it to the skip, concatenate, refine.

    ``decoder="dense"``: :class:`TransitionUp` (3x3 stride-2 transposed conv keeping the channel count)
    and a dense block. ``decoder="conv"``: :class:`Upsample` to the skip's width and a U-Net
    :class:`DoubleConv` back to that width. Inputs x (B, C_x, *s) and skip (B, C_skip, *S) with
    ``S <= 2s``; output (B, ``out_channels``, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        num_layers: int,
        growth_rate: int,
        norm: Norm,
        dropout: float,
        bottleneck_factor: int | None,
        decoder: DenseDecoder,
        upsample: UpsampleMode,
        new_features_only: bool,
    ) -> None:
        super().__init__()
        if decoder == "dense":
            self.up: nn.Module = TransitionUp(spatial_dims, in_channels, in_channels)
            block = DenseBlock(
                spatial_dims,
                in_channels + skip_channels,
                num_layers,
                growth_rate,
                norm,
                dropout,
                bottleneck_factor,
                new_features_only,
            )
            self.out_channels = block.out_channels
            self.block: nn.Module = block
        elif decoder == "conv":
            self.up = Upsample(spatial_dims, in_channels, skip_channels, upsample)
            self.block = DoubleConv(spatial_dims, 2 * skip_channels, skip_channels, norm)
            self.out_channels = skip_channels
        else:
            raise ValueError(f"unknown decoder {decoder!r}; choose 'dense' or 'conv'")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = crop_to(self.up(x), tuple(skip.shape[2:]))
        return self.block(skip_join(skip, x))


class DenseUNet(nn.Module):
    """DenseNet encoder + U-Net decoder with skips; returns logits (B, ``num_classes``, *spatial).

    Input (B, ``in_channels``, H, W) or (B, ``in_channels``, D, H, W). A 3x3 convolution to
    ``init_features`` maps is followed, per level, by a dense block (``growth_rate`` new maps per layer,
    ``down_blocks[i]`` layers) whose output is kept as the skip, and a transition down (BN-ReLU-Conv1x1
    to ``compression`` x the channels, dropout, 2x max pooling). A bottleneck dense block joins the two
    paths; the decoder mirrors the encoder (``up_blocks`` defaults to ``reversed(down_blocks)``).

    The defaults are FC-DenseNet103 (Jégou et al. 2017): growth 16, blocks 4-5-7-10-12, bottleneck
    15, 48 initial maps, dropout 0.2, 9.4M parameters for 3 input channels and 11 classes.
    Pooling uses ``ceil_mode`` and every upsampled map is cropped to its skip, so any input size works
    and the output has the input's spatial size. Convolutions get He initialisation, as in both papers.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: input channels.
        num_classes: output channels, one logit per class including background.
        growth_rate: new feature maps per dense layer (k).
        down_blocks: dense layers per encoder level; its length is the number of 2x downsamplings.
        bottleneck_layers: dense layers at the lowest resolution.
        up_blocks: dense layers per decoder level, deepest first (``decoder="dense"`` only).
        init_features: maps of the first 3x3 convolution.
        bottleneck_factor: DenseNet-B 1x1 bottleneck of ``bottleneck_factor * growth_rate`` maps before
            each 3x3 conv (``None``: no 1x1, as in FC-DenseNet; 4 in DenseNet-BC).
        compression: transition-down width factor theta in (0, 1] (1 in FC-DenseNet, 0.5 in DenseNet-BC).
        dropout: element-wise dropout after each dense-layer and transition convolution.
        norm: normalisation before each ReLU-conv (``"batch"`` in both papers).
        decoder: ``"dense"`` (FC-DenseNet up path) or ``"conv"`` (DenseUNet of H-DenseUNet).
        upsample: upsampling of the ``"conv"`` decoder (``"interp"`` is bilinear as in H-DenseUNet).

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or 3, an empty ``down_blocks``, ``up_blocks`` of
            another length, a non-positive block size, ``compression`` outside (0, 1], or an unknown
            ``decoder``/``norm``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        growth_rate: int = 16,
        down_blocks: Sequence[int] = (4, 5, 7, 10, 12),
        bottleneck_layers: int = 15,
        up_blocks: Sequence[int] | None = None,
        init_features: int = 48,
        bottleneck_factor: int | None = None,
        compression: float = 1.0,
        dropout: float = 0.2,
        norm: Norm = "batch",
        decoder: DenseDecoder = "dense",
        upsample: UpsampleMode = "interp",
    ) -> None:
        super().__init__()
        down = list(down_blocks)
        up = list(reversed(down)) if up_blocks is None else list(up_blocks)
        if not down:
            raise ValueError("down_blocks must list at least one dense block, got an empty sequence")
        if len(up) != len(down):
            raise ValueError(f"up_blocks {up} must have as many levels as down_blocks {down}")
        if min([*down, *up, bottleneck_layers]) < 1:
            raise ValueError(f"every block needs >= 1 layer, got down {down}, bottleneck {bottleneck_layers}, up {up}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression!r}")
        if decoder not in ("dense", "conv"):
            raise ValueError(f"unknown decoder {decoder!r}; choose 'dense' or 'conv'")
        self.spatial_dims = spatial_dims
        self.stem = conv_layer(spatial_dims)(in_channels, init_features, kernel_size=3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        channels = init_features
        skip_channels: list[int] = []
        for n in down:
            block = DenseBlock(spatial_dims, channels, n, growth_rate, norm, dropout, bottleneck_factor)
            self.down_blocks.append(block)
            skip_channels.append(block.out_channels)
            out = max(1, int(block.out_channels * compression))
            self.transitions.append(TransitionDown(spatial_dims, block.out_channels, out, norm, dropout))
            channels = out

        dense = decoder == "dense"
        self.bottleneck = DenseBlock(
            spatial_dims, channels, bottleneck_layers, growth_rate, norm, dropout, bottleneck_factor, dense
        )
        channels = self.bottleneck.out_channels

        self.up_levels = nn.ModuleList()
        for i, (n, skip) in enumerate(zip(up, reversed(skip_channels), strict=True)):
            last = i == len(up) - 1
            level = DenseUpLevel(
                spatial_dims,
                channels,
                skip,
                n,
                growth_rate,
                norm,
                dropout,
                bottleneck_factor,
                decoder,
                upsample,
                new_features_only=dense and not last,
            )
            self.up_levels.append(level)
            channels = level.out_channels
        self.head = conv_layer(spatial_dims)(channels, num_classes, kernel_size=1)
        init_he_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for block, transition in zip(self.down_blocks, self.transitions, strict=True):
            x = block(x)
            skips.append(x)
            x = transition(x)
        x = self.bottleneck(x)
        for level, skip in zip(self.up_levels, reversed(skips), strict=True):
            x = level(x, skip)
        return self.head(x)


def _fc_densenet(
    down_blocks: tuple[int, ...],
    bottleneck_layers: int,
    growth_rate: int,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    dropout: float,
    norm: Norm,
) -> DenseUNet:
    return DenseUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=num_classes,
        growth_rate=growth_rate,
        down_blocks=down_blocks,
        bottleneck_layers=bottleneck_layers,
        init_features=48,
        dropout=dropout,
        norm=norm,
        decoder="dense",
    )


def fc_densenet103(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    dropout: float = 0.2,
    norm: Norm = "batch",
) -> DenseUNet:
    """FC-DenseNet103 (Jégou et al. 2017): k=16, blocks 4-5-7-10-12, bottleneck 15.

    At 3 input channels and 11 classes (CamVid) this has 9,322,091 trainable parameters; adding the
    51,536 x 2 BatchNorm running statistics, which the authors' Lasagne ``count_params`` includes, gives
    9,425,163, the paper's 9.4M.
    """
    return _fc_densenet((4, 5, 7, 10, 12), 15, 16, spatial_dims, in_channels, num_classes, dropout, norm)


def fc_densenet67(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    dropout: float = 0.2,
    norm: Norm = "batch",
) -> DenseUNet:
    """FC-DenseNet67 (Jégou et al. 2017): k=16, 5 layers per block, 5 levels.

    3,463,243 trainable parameters at 3 in / 11 out; 3,502,923 with BatchNorm statistics (paper: 3.5M).
    """
    return _fc_densenet((5,) * 5, 5, 16, spatial_dims, in_channels, num_classes, dropout, norm)


def fc_densenet56(
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    dropout: float = 0.2,
    norm: Norm = "batch",
) -> DenseUNet:
    """FC-DenseNet56 (Jégou et al. 2017): k=12, 4 layers per block, 5 levels.

    1,376,795 trainable parameters at 3 in / 11 out (1,397,963 with BatchNorm statistics; the paper
    rounds its count to 1.5M).
    """
    return _fc_densenet((4,) * 5, 4, 12, spatial_dims, in_channels, num_classes, dropout, norm)
