"""Image classifiers built on the same encoders as the encoder-decoder segmentation networks."""

from __future__ import annotations

import torch
from torch import nn

from segpipe.models.encoders import ENCODER_DEPTH, apply_encoder_weights, create_encoder


class EncoderClassifier(nn.Module):
    """Encoder, global average pooling, dropout, linear layer; logits (B, num_classes).

    The encoder is built exactly as in :class:`segpipe.models.EncoderUNet` and
    :class:`segpipe.models.EncoderFCN` (same name, same ``in_channels``), so its state dict, stored under
    ``net.encoder.`` in a ``segpipe classify`` checkpoint, loads into their ``encoder`` key for key.

    Args:
        in_channels: input channels.
        num_classes: number of image classes.
        encoder: smp encoder name or ``tu-<timm model>``.
        encoder_weights: ``"imagenet"``, ``None``/``"none"`` or a path to a weights/checkpoint file.
        dropout: dropout before the linear layer.

    Raises:
        ValueError: for an unknown encoder or ``num_classes`` < 2.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        self.encoder = create_encoder(encoder, in_channels, ENCODER_DEPTH)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.out_channels[-1], num_classes)
        self.weights_report = apply_encoder_weights(self.encoder, encoder, encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]
        return self.head(self.dropout(features.mean(dim=(2, 3))))
