"""Fine-tuning schedule for pretrained encoders: train the decoder on a frozen encoder, then everything."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from segpipe.errors import SegpipeError


def _encoder(pl_module: pl.LightningModule) -> nn.Module:
    encoder = getattr(getattr(pl_module, "net", None), "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise SegpipeError(
            f"EncoderFinetuning needs a network with an encoder (encoder_unet, encoder_fcn, unet, segnet); "
            f"{type(getattr(pl_module, 'net', pl_module)).__name__} has none"
        )
    return encoder


class EncoderFinetuning(BaseFinetuning):
    """Freeze ``pl_module.net.encoder`` for the first ``unfreeze_at_epoch`` epochs, then train it too.

    While frozen, the encoder's parameters take no gradient and its BatchNorm layers stay in eval mode
    (their running statistics, e.g. ImageNet's or those of a ``segpipe classify`` run, are used and
    kept), unless ``train_bn`` is set. At epoch ``unfreeze_at_epoch`` the encoder becomes trainable
    and its parameters join the optimiser as a new group with learning rate ``encoder_lr`` (default:
    the task's ``encoder_lr``, else the decoder's current learning rate). A scheduler built before
    the unfreezing leaves the new group's learning rate constant. ``unfreeze_at_epoch: 0`` never
    freezes. Resuming from a checkpoint after the unfreezing restores the trainable encoder.

    Raises:
        ValueError: for a negative ``unfreeze_at_epoch`` or non-positive ``encoder_lr``.
        SegpipeError: at fit start, if the network has no ``encoder``.
    """

    def __init__(self, unfreeze_at_epoch: int = 5, encoder_lr: float | None = None, train_bn: bool = False) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise ValueError(f"unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}")
        if encoder_lr is not None and encoder_lr <= 0:
            raise ValueError(f"encoder_lr must be > 0, got {encoder_lr}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.encoder_lr = encoder_lr
        self.train_bn = train_bn
        self.frozen = False

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        encoder = _encoder(pl_module)
        if self.unfreeze_at_epoch > 0:
            self.freeze(encoder, train_bn=self.train_bn)
            self.frozen = True

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if not self.frozen or epoch < self.unfreeze_at_epoch:
            return
        lr = self.encoder_lr or pl_module.hparams.get("encoder_lr") or optimizer.param_groups[0]["lr"]
        encoder = _encoder(pl_module)
        self.unfreeze_and_add_param_group(encoder, optimizer, lr=lr, train_bn=True)
        encoder.train(pl_module.training)  # BatchNorm layers held in eval mode resume training
        self.frozen = False
        rank_zero_info(f"segpipe: encoder unfrozen at epoch {epoch}, learning rate {lr:g}")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        # Lightning puts the whole module back in train mode each epoch and after validation.
        if self.frozen and not self.train_bn:
            for module in _encoder(pl_module).modules():
                if isinstance(module, _BatchNorm) and module.training:
                    module.eval()
