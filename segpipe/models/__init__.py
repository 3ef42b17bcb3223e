"""Segmentation networks: plain ``nn.Module``s, free of Lightning, returning logits."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from segpipe.models.dense_unet import DenseUNet, fc_densenet56, fc_densenet67, fc_densenet103
from segpipe.models.encoders import EncoderFCN, EncoderUNet
from segpipe.models.fcn import FCN, fcn8s, fcn16s, fcn32s
from segpipe.models.segnet import SegNet
from segpipe.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "dense_unet": DenseUNet,
    "fc_densenet56": fc_densenet56,
    "fc_densenet67": fc_densenet67,
    "fc_densenet103": fc_densenet103,
    "segnet": SegNet,
    "fcn": FCN,
    "fcn8s": fcn8s,
    "fcn16s": fcn16s,
    "fcn32s": fcn32s,
    "encoder_unet": EncoderUNet,
    "encoder_fcn": EncoderFCN,
}


def build_model(name: str, spatial_dims: int, in_channels: int, num_classes: int, **kwargs: object) -> nn.Module:
    """Instantiate the architecture registered as ``name``.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the valid names).
    """
    key = name.lower().replace("-", "_")
    if key not in MODELS:
        close = difflib.get_close_matches(key, MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.{hint}")
    return MODELS[key](spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kwargs)


__all__ = [
    "FCN",
    "MODELS",
    "DenseUNet",
    "EncoderFCN",
    "EncoderUNet",
    "SegNet",
    "UNet",
    "build_model",
    "fc_densenet56",
    "fc_densenet67",
    "fc_densenet103",
    "fcn8s",
    "fcn16s",
    "fcn32s",
]
