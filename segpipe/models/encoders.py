"""Segmentation networks whose encoder is a classification network (segmentation-models-pytorch, timm).

Encoders are named as in segmentation-models-pytorch (``resnet18``, ``resnet34``, ``resnet50``,
``vgg16``, ``vgg16_bn``, ``densenet121``, ...) or ``tu-<timm model>`` for any timm model
(``tu-convnext_tiny``, ``tu-efficientnet_b0``, ...). Their weights (``encoder_weights``) are:

- ``"imagenet"``: the libraries' ImageNet weights from the Hugging Face cache (downloaded when online;
  offline and uncached, a one-line error within seconds says how to supply the file);
- ``None`` or ``"none"``: random initialisation;
- a path: a ``.pth``/``.safetensors`` state dict (encoder or classifier) or a Lightning ``.ckpt``, such
  as one written by ``segpipe classify fit``; the matched, missing and unexpected keys are reported.

Pretrained 3-channel first convolutions are adapted to ``in_channels`` (see
:func:`segpipe.models.weights.adapt_conv_weight`). Every network here exposes its encoder as
``.encoder`` (for :class:`segpipe.callbacks.EncoderFinetuning` and ``encoder_lr``).
"""

from __future__ import annotations

import difflib
from typing import Literal

import segmentation_models_pytorch as smp
import timm
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from segpipe.models.base import StridedNet
from segpipe.models.fcn import BilinearUp, FCNHead, FCNVariant
from segpipe.models.hub import imagenet_weights_file
from segpipe.models.weights import LoadReport, load_encoder_weights

ENCODER_DEPTH = 5


def _check_2d(spatial_dims: int, model: str) -> None:
    if spatial_dims != 2:
        raise ValueError(
            f"{model} takes 2D images (spatial_dims=2), got spatial_dims={spatial_dims}; "
            "for volumes use unet, dense_unet, segnet or fcn with spatial_dims: 3"
        )


def check_encoder_name(encoder: str) -> None:
    """Raise a ValueError naming close matches for an unknown encoder.

    Raises:
        ValueError: if ``encoder`` is neither an smp encoder nor ``tu-<a timm model>``.
    """
    if encoder.startswith("tu-"):
        if not timm.is_model(encoder[3:]):
            close = difflib.get_close_matches(encoder[3:], timm.list_models(), n=3)
            raise ValueError(f"unknown timm model {encoder[3:]!r} in encoder {encoder!r}; close names: {close}")
        return
    if encoder not in smp.encoders.encoders:
        close = difflib.get_close_matches(encoder, list(smp.encoders.encoders), n=3)
        raise ValueError(
            f"unknown encoder {encoder!r}; use a segmentation-models-pytorch name "
            f"(e.g. {close or ['resnet34', 'vgg16_bn', 'densenet121']}) or 'tu-<timm model name>'"
        )


def create_encoder(encoder: str, in_channels: int, depth: int = ENCODER_DEPTH) -> nn.Module:
    """A randomly initialised encoder; ``forward`` returns ``depth + 1`` feature maps, strides 1 .. 2**depth.

    Raises:
        ValueError: for an unknown encoder name (the message suggests known names).
    """
    check_encoder_name(encoder)
    try:
        return smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=depth, weights=None)
    except (RuntimeError, ValueError) as err:  # e.g. a timm model without feature extraction
        raise ValueError(f"cannot build encoder {encoder!r}: {err}") from None


def apply_encoder_weights(encoder_module: nn.Module, encoder: str, weights: str | None) -> LoadReport | None:
    """Load ``weights`` (``"imagenet"``, ``None``/``"none"`` or a file path) into ``encoder_module``.

    Raises:
        SegpipeError: when ImageNet weights are unavailable offline, or a file is unusable or matches
            no tensor of the encoder.
    """
    if weights is None or str(weights).lower() == "none":
        return None
    if weights == "imagenet":
        path = imagenet_weights_file(encoder)
        report = load_encoder_weights(encoder_module, path, source_name=f"imagenet ({path})")
    else:
        report = load_encoder_weights(encoder_module, weights)
    rank_zero_info(f"segpipe: {report.summary()}")
    return report


class EncoderUNet(StridedNet):
    """U-Net decoder (segmentation-models-pytorch) on a classification encoder; logits (B, K, H, W).

    Input (B, ``in_channels``, H, W) of any size: zero-padded at the end to a multiple of
    ``2 ** encoder_depth`` and the logits cropped back.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels (pretrained 3-channel first convolutions are adapted).
        num_classes: output channels, one logit per class including background.
        encoder: smp encoder name or ``tu-<timm model>``.
        encoder_weights: ``"imagenet"``, ``None``/``"none"`` or a path to a weights/checkpoint file.
        encoder_depth: encoder stages used (3..5).
        decoder_channels: widths of the decoder stages (``encoder_depth`` values; smp's default
            ``[256, 128, 64, 32, 16]`` truncated to the depth).
        decoder_attention: ``"scse"`` adds squeeze-and-excitation attention in the decoder.

    Raises:
        ValueError: for ``spatial_dims`` != 2, an unknown encoder or a bad depth.
        SegpipeError: when the encoder weights cannot be loaded.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        encoder_depth: int = ENCODER_DEPTH,
        decoder_channels: list[int] | None = None,
        decoder_attention: Literal["scse"] | None = None,
    ) -> None:
        super().__init__()
        _check_2d(spatial_dims, "encoder_unet")
        if not 3 <= encoder_depth <= 5:
            raise ValueError(f"encoder_depth must be 3, 4 or 5, got {encoder_depth}")
        check_encoder_name(encoder)
        channels = list(decoder_channels or [256, 128, 64, 32, 16][:encoder_depth])
        unet = smp.Unet(
            encoder_name=encoder,
            encoder_depth=encoder_depth,
            encoder_weights=None,
            decoder_channels=channels,
            decoder_attention_type=decoder_attention,
            in_channels=in_channels,
            classes=num_classes,
        )
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.head = unet.segmentation_head
        self.stride = 2**encoder_depth
        self.weights_report = apply_encoder_weights(self.encoder, encoder, encoder_weights)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for H, W multiples of ``2 ** encoder_depth``."""
        return self.head(self.decoder(self.encoder(x)))


class EncoderFCN(StridedNet):
    """FCN-32s/16s/8s (Long et al. 2015) on a classification encoder; logits (B, K, H, W).

    The encoder's stride-32 features go through a convolutionalised classifier (``fc_kernel`` conv,
    1x1 conv, class scores); as in :class:`segpipe.models.FCN`, the scores are upsampled by learned
    transposed convolutions initialised to bilinear interpolation and summed with zero-initialised
    1x1 class scores of the stride-16 (``16s``, ``8s``) and stride-8 (``8s``) features. With a VGG16
    encoder this is the paper's network, apart from narrower fc layers by default.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels (pretrained 3-channel first convolutions are adapted).
        num_classes: output channels, one logit per class including background.
        encoder: smp encoder name or ``tu-<timm model>``.
        encoder_weights: ``"imagenet"``, ``None``/``"none"`` or a path to a weights/checkpoint file.
        variant: ``"32s"``, ``"16s"`` or ``"8s"``.
        fc_channels: width of the convolutionalised fc6/fc7.
        fc_kernel: kernel of fc6 (odd).
        dropout: dropout after fc6 and fc7.

    Raises:
        ValueError: for ``spatial_dims`` != 2, an unknown encoder or variant, or an even ``fc_kernel``.
        SegpipeError: when the encoder weights cannot be loaded.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        encoder: str = "resnet34",
        encoder_weights: str | None = None,
        variant: FCNVariant = "8s",
        fc_channels: int = 512,
        fc_kernel: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_2d(spatial_dims, "encoder_fcn")
        if variant not in ("32s", "16s", "8s"):
            raise ValueError(f"unknown FCN variant {variant!r}; choose '32s', '16s' or '8s'")
        if fc_kernel < 1 or fc_kernel % 2 == 0:
            raise ValueError(f"fc_kernel must be a positive odd number, got {fc_kernel}")
        self.variant = variant
        self.stride = 2**ENCODER_DEPTH
        self.encoder = create_encoder(encoder, in_channels, ENCODER_DEPTH)
        widths = list(self.encoder.out_channels)
        self.head = FCNHead(2, widths[-1], fc_channels, num_classes, fc_kernel, dropout)
        scores: list[nn.Conv2d] = [self.head[-1]]
        if variant != "32s":
            self.score_pool4 = nn.Conv2d(widths[-2], num_classes, 1)
            self.upscore2 = BilinearUp(2, num_classes, 2)
            scores.append(self.score_pool4)
        if variant == "8s":
            self.score_pool3 = nn.Conv2d(widths[-3], num_classes, 1)
            self.upscore_pool4 = BilinearUp(2, num_classes, 2)
            scores.append(self.score_pool3)
        self.upscore = BilinearUp(2, num_classes, {"32s": 32, "16s": 16, "8s": 8}[variant])
        for score in scores:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.weights_report = apply_encoder_weights(self.encoder, encoder, encoder_weights)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for H, W multiples of 32."""
        features = self.encoder(x)
        score = self.head(features[-1])
        if self.variant != "32s":
            score = self.upscore2(score) + self.score_pool4(features[-2])
        if self.variant == "8s":
            score = self.upscore_pool4(score) + self.score_pool3(features[-3])
        return self.upscore(score)


__all__ = ["EncoderFCN", "EncoderUNet", "apply_encoder_weights", "create_encoder"]
