"""ClassificationTask: train an encoder on whole-image labels, for transfer to segmentation."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from segpipe.models.classifier import EncoderClassifier
from segpipe.tasks.base import BaseTask, default_optimizer


class ClassificationTask(BaseTask):
    """Train :class:`segpipe.models.classifier.EncoderClassifier` on ``{"image": (B, C, H, W), "label": (B,)}``.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` (the checkpoint monitor) and the same
    with ``test/``. The checkpoint's ``net.encoder.*`` tensors are what a segmentation config names as
    ``model_kwargs.encoder_weights``.

    Args:
        encoder: smp encoder name (``resnet18``, ``vgg16_bn``, ...) or ``tu-<timm model>``.
        encoder_weights: starting weights of the encoder: ``"imagenet"``, ``None`` or a file.
        in_channels: channels of the input images.
        num_classes: number of classes (subfolders of the dataset).
        class_names: names of the classes, in label order (stored with the checkpoint).
        dropout: dropout before the linear classifier.
        label_smoothing: cross-entropy label smoothing.
        optimizer: optimiser factory (AdamW, lr 1e-3, weight decay 1e-4 by default).
        lr_scheduler: scheduler factory; ``ReduceLROnPlateau`` monitors ``val/acc``;
            :class:`~segpipe.tasks.schedules.CosineToEnd` anneals over the whole run (no ``T_max``).

    Raises:
        ValueError: for an unknown encoder or ``class_names`` of the wrong length.
    """

    monitor = "val/acc"

    def __init__(
        self,
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        in_channels: int = 1,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)

    def configure_models(self) -> None:
        h = self.hparams
        self.net = EncoderClassifier(h.in_channels, h.num_classes, h.encoder, h.encoder_weights, h.dropout)

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hparams.label_smoothing)

    def configure_metrics(self) -> None:
        self.set_stage_metrics(MetricCollection({"acc": MulticlassAccuracy(self.hparams.num_classes, average="micro")}))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.net(image)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        accuracy = self.stage_metrics(stage)
        accuracy.update(logits.argmax(1), batch["label"])
        size = len(batch["image"])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "train", batch_size=size)
        self.log_dict(accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=size)
        return loss

    def training_loss(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """``{"name": file stems, "label": (B,) predicted class, "probability": (B, K)}``."""
        probability = self(batch["image"]).softmax(1)
        return {"name": batch["name"], "label": probability.argmax(1), "probability": probability}
