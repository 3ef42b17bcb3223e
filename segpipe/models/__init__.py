"""Segmentation networks: plain ``nn.Module``s, free of Lightning, returning logits."""

from __future__ import annotations

from segpipe.models.dense_unet import DenseUNet, fc_densenet56, fc_densenet67, fc_densenet103
from segpipe.models.encoders import EncoderFCN, EncoderUNet
from segpipe.models.fcn import FCN, fcn8s, fcn16s, fcn32s
from segpipe.models.registry import MODELS, build_model, check_model_options, describe_model_options, model_options
from segpipe.models.segnet import SegNet
from segpipe.models.unet import UNet

__all__ = [
    "FCN",
    "MODELS",
    "DenseUNet",
    "EncoderFCN",
    "EncoderUNet",
    "SegNet",
    "UNet",
    "build_model",
    "check_model_options",
    "describe_model_options",
    "fc_densenet56",
    "fc_densenet67",
    "fc_densenet103",
    "fcn8s",
    "fcn16s",
    "fcn32s",
    "model_options",
]
