"""Optimiser parameter groups: a separate learning rate for a pretrained encoder."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(net: nn.Module, encoder_lr: float | None = None) -> list[Any]:
    """The trainable parameters of ``net``, as one list or as two groups (decoder, then encoder).

    With ``encoder_lr``, ``net.encoder``'s trainable parameters form a second group with that learning
    rate (left out while the encoder is frozen; :class:`segpipe.callbacks.finetuning.EncoderFinetuning`
    adds it when it unfreezes); every other parameter keeps the optimiser's learning rate. Frozen
    parameters (``requires_grad=False``) are never handed to the optimiser.

    Raises:
        ValueError: if ``encoder_lr`` is given but ``net`` has no ``encoder``, or is not positive.
    """
    if encoder_lr is None:
        return [p for p in net.parameters() if p.requires_grad]
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"encoder_lr={encoder_lr} needs a network with an encoder (encoder_unet, encoder_fcn); "
            f"{type(net).__name__} has none"
        )
    if encoder_lr <= 0:
        raise ValueError(f"encoder_lr must be > 0, got {encoder_lr}")
    in_encoder = {id(p) for p in encoder.parameters()}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in in_encoder]
    groups: list[dict[str, Any]] = [{"params": rest}]
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": encoder_lr})
    return groups
