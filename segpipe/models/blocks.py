"""Building blocks shared by every segpipe architecture, in 2D and 3D.

Shapes follow MONAI: tensors are (B, C, H, W) for ``spatial_dims=2`` and (B, C, D, H, W) for 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "group"] | None
UpsampleMode = Literal["transpose", "interp"]
Size = int | Sequence[int]
"""One size for every spatial axis, or one per axis (nnU-Net's anisotropic kernels and strides)."""


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def half_kernel(kernel_size: Size) -> int | tuple[int, ...]:
    """The padding that keeps the size under an odd ``kernel_size``, per axis when it is given per axis."""
    if isinstance(kernel_size, int):
        return kernel_size // 2
    return tuple(k // 2 for k in kernel_size)


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    _check_dims(spatial_dims)
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def conv_transpose_layer(spatial_dims: int) -> type[nn.Module]:
    _check_dims(spatial_dims)
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def max_pool_layer(spatial_dims: int) -> type[nn.Module]:
    _check_dims(spatial_dims)
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


def norm_layer(norm: Norm, spatial_dims: int, channels: int) -> nn.Module:
    """Return the normalisation layer named by ``norm`` (``None`` gives an identity)."""
    _check_dims(spatial_dims)
    if norm is None:
        return nn.Identity()
    if norm == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if norm == "group":
        groups = math.gcd(channels, 8)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {norm!r}; choose one of 'batch', 'instance', 'group' or null")


class ConvNormAct(nn.Sequential):
    """Convolution, optional normalisation, ReLU. The bias is dropped when a norm follows.

    ``kernel_size`` and ``padding`` are one size or one per axis; ``padding=None`` keeps odd kernels' size.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Size = 3,
        padding: Size | None = None,
        stride: int = 1,
        norm: Norm = "batch",
        act: bool = True,
    ) -> None:
        padding = half_kernel(kernel_size) if padding is None else padding
        conv = conv_layer(spatial_dims)(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=norm is None
        )
        layers: list[nn.Module] = [conv, norm_layer(norm, spatial_dims, out_channels)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvNormAct layers: the unit of every U-Net level.

    ``kernel_size`` per axis (e.g. ``(3, 3, 1)``) gives nnU-Net's in-plane convolutions for the first
    levels of very anisotropic volumes.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: Norm = "batch",
        padded: bool = True,
        dropout: float = 0.0,
        kernel_size: Size = 3,
    ) -> None:
        pad = half_kernel(kernel_size) if padded else 0
        layers: list[nn.Module] = [
            ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, pad, norm=norm),
            ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, pad, norm=norm),
        ]
        if dropout > 0:
            layers.append((nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)(dropout))
        super().__init__(*layers)


class Upsample(nn.Module):
    """Multiply the spatial size by ``scale`` (2, or one factor per axis) and map ``in_channels`` to ``out_channels``.

    ``transpose`` learns a transposed convolution with kernel = stride = ``scale`` ("up-convolution" in
    Ronneberger et al.); ``interp`` uses (bi/tri)linear interpolation followed by a 1x1 convolution,
    which avoids checkerboard artefacts.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        mode: UpsampleMode = "transpose",
        scale: Size = 2,
    ) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = conv_transpose_layer(spatial_dims)(
                in_channels, out_channels, kernel_size=scale, stride=scale
            )
        elif mode == "interp":
            factor = scale if isinstance(scale, int) else tuple(float(f) for f in scale)
            mode_name = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=factor, mode=mode_name, align_corners=False),
                conv_layer(spatial_dims)(in_channels, out_channels, kernel_size=1),
            )
        else:
            raise ValueError(f"unknown upsample mode {mode!r}; choose 'transpose' or 'interp'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def center_crop(x: torch.Tensor, spatial_shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Crop the trailing spatial dims of ``x`` to ``spatial_shape`` around the centre."""
    slices = [slice(None), slice(None)]
    for size, target in zip(x.shape[2:], spatial_shape, strict=True):
        start = (size - target) // 2
        slices.append(slice(start, start + target))
    return x[tuple(slices)]


def skip_join(skip: torch.Tensor, x: torch.Tensor, mode: Literal["concat", "sum"] = "concat") -> torch.Tensor:
    """Join an encoder skip with decoder features, centre-cropping the skip if it is larger."""
    if skip.shape[2:] != x.shape[2:]:
        skip = center_crop(skip, x.shape[2:])
    if mode == "concat":
        return torch.cat([skip, x], dim=1)
    if mode == "sum":
        return skip + x
    raise ValueError(f"unknown skip join {mode!r}; choose 'concat' or 'sum'")


def reflect_pad(x: torch.Tensor, before: list[int], after: list[int]) -> torch.Tensor:
    """Mirror-pad the spatial dims (the overlap-tile strategy of Ronneberger et al.).

    Falls back to edge replication where the pad is wider than the image, which reflection cannot do.
    """
    pads: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        pads += [b, a]
    mode = "reflect" if all(p < s for p, s in zip(pads, _repeat2(x.shape[2:]), strict=True)) else "replicate"
    return F.pad(x, pads, mode=mode)


def _repeat2(shape: torch.Size) -> list[int]:
    out: list[int] = []
    for s in reversed(shape):
        out += [s, s]
    return out


def dropout_layer(spatial_dims: int, p: float, channelwise: bool = False) -> nn.Module:
    """Element-wise (``nn.Dropout``) or channel-wise (``nn.Dropout2d``/``3d``) dropout; identity for ``p=0``.

    Raises:
        ValueError: if ``p`` is outside [0, 1).
    """
    _check_dims(spatial_dims)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    if p == 0.0:
        return nn.Identity()
    if channelwise:
        return (nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)(p)
    return nn.Dropout(p)


class NormActConv(nn.Sequential):
    """Pre-activation unit of DenseNet: normalisation, ReLU, convolution, optional dropout.

    Input (B, ``in_channels``, *spatial), output (B, ``out_channels``, *spatial') with ``spatial'`` equal
    to ``spatial`` for odd kernels at stride 1. The convolution keeps its bias, as in Jégou et al. (2017).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: Norm = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            norm_layer(norm, spatial_dims, in_channels),
            nn.ReLU(inplace=True),
            conv_layer(spatial_dims)(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            dropout_layer(spatial_dims, dropout),
        )


class DenseLayer(nn.Module):
    """One layer of a dense block (Huang et al. 2017): BN-ReLU-Conv3x3(-Dropout) giving ``growth_rate`` maps.

    With ``bottleneck_factor`` set (DenseNet-B), a BN-ReLU-Conv1x1 to ``bottleneck_factor * growth_rate``
    channels comes first. ``forward`` returns only the new feature maps (B, ``growth_rate``, *spatial); the
    block concatenates them.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        growth_rate: int,
        norm: Norm = "batch",
        dropout: float = 0.0,
        bottleneck_factor: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        if bottleneck_factor is not None:
            layers.append(NormActConv(spatial_dims, channels, bottleneck_factor * growth_rate, 1, norm))
            channels = bottleneck_factor * growth_rate
        layers.append(NormActConv(spatial_dims, channels, growth_rate, 3, norm, dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each seeing the concatenation of the block input and all earlier outputs.

    Input (B, ``in_channels``, *spatial). Output (B, ``out_channels``, *spatial) where ``out_channels`` is
    ``in_channels + num_layers * growth_rate``, or only ``num_layers * growth_rate`` (the new maps) when
    ``new_features_only`` is set: the up path of FC-DenseNet upsamples only those to stop the channel
    count from exploding.

    Raises:
        ValueError: if ``num_layers < 1`` or ``growth_rate < 1``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_layers: int,
        growth_rate: int,
        norm: Norm = "batch",
        dropout: float = 0.0,
        bottleneck_factor: int | None = None,
        new_features_only: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1 or growth_rate < 1:
            raise ValueError(f"num_layers and growth_rate must be >= 1, got {num_layers} and {growth_rate}")
        self.new_features_only = new_features_only
        self.layers = nn.ModuleList(
            DenseLayer(spatial_dims, in_channels + i * growth_rate, growth_rate, norm, dropout, bottleneck_factor)
            for i in range(num_layers)
        )
        new = num_layers * growth_rate
        self.out_channels = new if new_features_only else in_channels + new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new: list[torch.Tensor] = []
        for layer in self.layers:
            out = layer(x)
            new.append(out)
            x = torch.cat([x, out], dim=1)
        return torch.cat(new, dim=1) if self.new_features_only else x


class TransitionDown(nn.Sequential):
    """BN-ReLU-Conv1x1(-Dropout) then 2x pooling: (B, C_in, *S) -> (B, C_out, *ceil(S / 2)).

    ``pool="max"`` is FC-DenseNet (Jégou et al. 2017), ``"avg"`` the DenseNet classifier (Huang et al.
    2017). Pooling uses ``ceil_mode`` so odd sizes lose no border pixel.

    Raises:
        ValueError: for an unknown ``pool``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: Norm = "batch",
        dropout: float = 0.0,
        pool: Literal["max", "avg"] = "max",
    ) -> None:
        if pool == "max":
            pooling: nn.Module = max_pool_layer(spatial_dims)(2, ceil_mode=True)
        elif pool == "avg":
            pooling = (nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d)(2, ceil_mode=True)
        else:
            raise ValueError(f"unknown pool {pool!r}; choose 'max' or 'avg'")
        super().__init__(NormActConv(spatial_dims, in_channels, out_channels, 1, norm, dropout), pooling)


class TransitionUp(nn.Module):
    """Stride-2 3x3 transposed convolution of FC-DenseNet: (B, C_in, *S) -> (B, C_out, *2S).

    ``padding=1, output_padding=1`` make the output exactly twice the input, so no crop is needed when
    the input was padded to a multiple of the total stride.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = conv_transpose_layer(spatial_dims)(
            in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class MaxPoolWithIndices(nn.Module):
    """2D/3D max pooling that also returns the argmax indices and the input size, for :class:`MaxUnpool`.

    ``forward(x)`` with x (B, C, *S) returns ``(pooled, indices, S)``; pooled and indices have shape
    (B, C, *ceil(S / stride)) with ``ceil_mode=True`` (the default), so sizes that are not a multiple of
    the stride keep their last row/column.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 2, stride: int = 2, ceil_mode: bool = True) -> None:
        super().__init__()
        self.pool = max_pool_layer(spatial_dims)(kernel_size, stride, ceil_mode=ceil_mode, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        pooled, indices = self.pool(x)
        return pooled, indices, tuple(x.shape[2:])


class MaxUnpool(nn.Module):
    """Inverse of :class:`MaxPoolWithIndices` (SegNet upsampling, Badrinarayanan et al. 2017).

    ``forward(x, indices, output_size)`` writes every value of x (B, C, *s) at the position its max came
    from in a zero tensor (B, C, *output_size); all other positions are zero.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 2, stride: int = 2) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        cls = nn.MaxUnpool2d if spatial_dims == 2 else nn.MaxUnpool3d
        self.unpool = cls(kernel_size, stride)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: tuple[int, ...]) -> torch.Tensor:
        if torch.are_deterministic_algorithms_enabled():
            return scatter_unpool(x, indices, output_size)
        return self.unpool(x, indices, output_size=output_size)


def scatter_unpool(x: torch.Tensor, indices: torch.Tensor, output_size: tuple[int, ...]) -> torch.Tensor:
    """Max-unpooling as a scatter into a zero tensor: the same values as ``F.max_unpool2d/3d``.

    Hand-written because PyTorch's max-unpooling kernels refuse to run under
    ``torch.use_deterministic_algorithms(True)`` (what ``trainer.deterministic: true`` sets), even
    though non-overlapping pooling windows give every value its own target; ``Tensor.scatter`` with
    unique indices is deterministic on every device.
    """
    batch, channels = x.shape[:2]
    out = x.new_zeros(batch, channels, math.prod(output_size))
    out = out.scatter(2, indices.reshape(batch, channels, -1), x.reshape(batch, channels, -1))
    return out.reshape(batch, channels, *output_size)


def bilinear_kernel(spatial_dims: int, kernel_size: int) -> torch.Tensor:
    """(Bi/tri)linear interpolation kernel of shape (kernel_size,) * spatial_dims.

    The filter of FCN's ``upsample_filt`` (Long et al. 2015): with ``kernel_size = 2 * factor``,
    ``stride = factor`` and ``padding = factor // 2`` a transposed convolution with this kernel performs
    linear interpolation by ``factor``.
    """
    _check_dims(spatial_dims)
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64, device="cpu")
    filt1d = 1 - (og - center).abs() / factor
    kernel = filt1d
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * filt1d
    return kernel.float()


def init_bilinear_(conv: nn.Module) -> None:
    """Initialise a transposed convolution (C, C, k, ..., k) to per-channel (bi/tri)linear interpolation.

    Channel i maps to channel i with :func:`bilinear_kernel`; cross-channel weights and the bias are zero.
    Weights on the ``meta`` device are left alone (they hold no values).

    Raises:
        ValueError: if ``conv`` is not a transposed convolution with equal in/out channels and a cubic
            kernel.
    """
    if not isinstance(conv, nn.ConvTranspose2d | nn.ConvTranspose3d):
        raise ValueError(f"expected a ConvTranspose2d/3d, got {type(conv).__name__}")
    in_ch, out_ch, *kernel = conv.weight.shape
    if conv.groups != 1 or in_ch != out_ch or len(set(kernel)) != 1:
        raise ValueError(
            f"bilinear init needs C -> C channels and a cubic kernel, got weight {tuple(conv.weight.shape)}"
        )
    if conv.weight.is_meta:
        return
    filt = bilinear_kernel(len(kernel), kernel[0]).to(conv.weight)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(out_ch):
            conv.weight[c, c] = filt
        if conv.bias is not None:
            conv.bias.zero_()


class VGGStage(nn.Sequential):
    """``num_convs`` 3x3 :class:`ConvNormAct` layers at one resolution, as in VGG (Simonyan & Zisserman).

    (B, ``in_channels``, *S) -> (B, ``out_channels``, *S). Shared by the SegNet and FCN encoders; the
    pooling is left to the caller (SegNet needs the indices, FCN does not).

    Raises:
        ValueError: if ``num_convs < 1``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, num_convs: int, norm: Norm = "batch"
    ) -> None:
        if num_convs < 1:
            raise ValueError(f"a VGG stage needs at least one convolution, got num_convs={num_convs}")
        layers = [
            ConvNormAct(spatial_dims, in_channels if i == 0 else out_channels, out_channels, norm=norm)
            for i in range(num_convs)
        ]
        super().__init__(*layers)


def vgg_widths(base_channels: int, num_stages: int, max_factor: int = 8) -> list[int]:
    """VGG stage widths: ``base_channels`` doubled per stage, capped at ``max_factor * base_channels``.

    ``vgg_widths(64, 5)`` is ``[64, 128, 256, 512, 512]``.

    Raises:
        ValueError: if ``base_channels`` or ``num_stages`` is not positive.
    """
    if base_channels < 1 or num_stages < 1:
        raise ValueError(f"base_channels and num_stages must be >= 1, got {base_channels} and {num_stages}")
    return [base_channels * min(2**i, max_factor) for i in range(num_stages)]


def init_he_(module: nn.Module) -> None:
    """He et al. (2015) initialisation of every (non-transposed) convolution in ``module``, biases zeroed.

    Normal with std ``sqrt(2 / fan_in)``, which keeps the activation variance through ReLU layers; the
    initialisation of VGG-style networks trained from scratch (SegNet, FC-DenseNet). PyTorch's default
    (uniform, gain 1/sqrt(3)) shrinks the signal by about 3x per layer, which stalls a 15-layer VGG
    without normalisation. Parameters on the ``meta`` device are left alone.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.modules.conv._ConvTransposeNd):
            if m.weight.is_meta:  # nothing to initialise (and random init on meta imports torch._dynamo)
                continue
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
