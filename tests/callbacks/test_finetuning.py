"""Fine-tuning controls: a frozen encoder (BatchNorm included) stays put, then trains after unfreezing."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from segpipe.callbacks.finetuning import EncoderFinetuning
from segpipe.errors import SegpipeError
from segpipe.tasks import SegmentationTask
from segpipe.tasks.param_groups import param_groups

MODEL_KWARGS = {"encoder": "resnet18", "decoder_channels": [16, 8, 8, 8, 8]}


def tiny_loader(n: int = 4, size: int = 32) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        image = torch.rand(1, size, size, generator=generator)
        samples.append({"image": image, "mask": (image[0] > 0.5).long()})
    return DataLoader(samples, batch_size=2)


class Snapshots(pl.Callback):
    """Encoder and decoder state at the end of each training epoch, and BN modes seen during it."""

    def __init__(self) -> None:
        self.encoder: list[dict[str, torch.Tensor]] = []
        self.decoder: list[dict[str, torch.Tensor]] = []
        self.bn_training: list[set[bool]] = []
        self.group_lrs: list[list[float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bn_training.append(set())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        modes = {m.training for m in pl_module.net.encoder.modules() if isinstance(m, _BatchNorm)}
        self.bn_training[-1] |= modes

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.encoder.append({k: v.clone() for k, v in pl_module.net.encoder.state_dict().items()})
        self.decoder.append({k: v.clone() for k, v in pl_module.net.decoder.state_dict().items()})
        self.group_lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_frozen_encoder_is_unchanged_then_trains_after_unfreezing():
    pl.seed_everything(0)
    task = SegmentationTask(model="encoder_unet", in_channels=1, num_classes=2, model_kwargs=MODEL_KWARGS)
    initial = {k: v.clone() for k, v in task.net.encoder.state_dict().items()}
    initial_decoder = {k: v.clone() for k, v in task.net.decoder.state_dict().items()}
    snapshots = Snapshots()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EncoderFinetuning(unfreeze_at_epoch=1, encoder_lr=1e-4), snapshots],
    )
    trainer.fit(task, train_dataloaders=tiny_loader())

    # Epoch 0: encoder frozen, weights and BatchNorm running statistics untouched, BN in eval mode.
    assert changed(initial, snapshots.encoder[0]) == []
    assert snapshots.bn_training[0] == {False}
    assert changed(initial_decoder, snapshots.decoder[0])
    assert snapshots.group_lrs[0] == [1e-3]
    # Epoch 1: unfrozen, every encoder convolution moves, BN trains, the encoder has its own rate.
    moved = changed(snapshots.encoder[0], snapshots.encoder[1])
    assert "conv1.weight" in moved and "layer4.1.conv2.weight" in moved and "bn1.running_mean" in moved
    assert snapshots.bn_training[1] == {True}
    assert snapshots.group_lrs[1] == [1e-3, 1e-4]


def test_encoder_lr_gives_two_groups_and_skips_frozen_parameters():
    task = SegmentationTask(model="encoder_fcn", in_channels=1, num_classes=2, model_kwargs={"encoder": "resnet18"})
    groups = param_groups(task.net, encoder_lr=1e-5)
    n_encoder = len(list(task.net.encoder.parameters()))
    assert len(groups) == 2 and groups[1]["lr"] == 1e-5 and len(groups[1]["params"]) == n_encoder
    assert len(groups[0]["params"]) == len(list(task.net.parameters())) - n_encoder
    task.net.encoder.requires_grad_(False)
    assert len(param_groups(task.net, encoder_lr=1e-5)) == 1
    assert len(param_groups(task.net)) == len(list(task.net.parameters())) - n_encoder


def test_encoder_controls_refuse_networks_without_an_encoder():
    net = nn.Conv2d(1, 2, 3)
    with pytest.raises(ValueError, match=r"encoder_lr=0\.1 needs a network with an encoder"):
        param_groups(net, encoder_lr=0.1)
    task = SegmentationTask(model="fcn32s", num_classes=2, model_kwargs={"base_channels": 4, "fc_channels": 8})
    with pytest.raises(SegpipeError, match="EncoderFinetuning needs a network with an encoder"):
        EncoderFinetuning(unfreeze_at_epoch=1).freeze_before_training(task)
    with pytest.raises(ValueError, match="unfreeze_at_epoch must be >= 0, got -1"):
        EncoderFinetuning(unfreeze_at_epoch=-1)
