"""SegmentationTask: a network from the registry, a loss, per-class metrics; the optimiser set-up is BaseTask's."""

from __future__ import annotations

import re
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric, MetricCollection

from segpipe.data.requirements import ModelRequirements
from segpipe.evaluation import OverlapScores
from segpipe.inference.postprocessing import apply_rule_to_batch, rule_of
from segpipe.inference.sliding_window import StitchDtype, WindowedInference
from segpipe.inference.tta import tta_axes
from segpipe.losses import LossName, SegmentationLoss
from segpipe.models import build_model, check_model_options, describe_model_options
from segpipe.tasks.base import BaseTask, default_optimizer
from segpipe.tasks.param_groups import param_groups

TRAIN_LOSS_KEY = "train_loss_running_mean"
# the SegmentationLoss options a config may set through loss_kwargs (the others are task arguments)
LOSS_OPTIONS = ("focal_gamma", "tversky_alpha", "tversky_beta", "lambda_focal", "lambda_tversky")
POSTPROCESSING_KEY = "postprocessing"
POOLED = re.compile(r"^test/(dice|iou)")


class SegmentationTask(BaseTask):
    """Train a segmentation network on batches ``{"image": (B, C, *spatial), "mask": (B, *spatial)}``.

    Logs ``train/loss``, ``val/loss``, per-class ``val/dice_<class>`` and ``val/iou_<class>`` (also as
    ``val/dice_c<k>``, ``val/iou_c<k>`` for class index k), ``val/dice`` (= ``val/dice_fg_mean``), the
    mean Dice over foreground classes (the checkpoint monitor), and ``val/dice_best`` with its
    ``best_epoch``. ``segpipe test`` logs ``test/loss`` and the split-level scores as
    ``test/dice_pooled_<class>``, ``test/dice_pooled_c<k>``, ``test/dice_pooled`` (foreground mean),
    ``test/dice_pooled_fg_mean`` and the same for ``iou``: the pixels of all test cases pooled.

    Args:
        model: architecture name in :data:`segpipe.models.MODELS` (``unet``, ...).
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: channels of the input images.
        num_classes: classes including background (label values 0..num_classes-1).
        model_kwargs: architecture options, e.g. ``{depth: 4, base_channels: 32}``; a wrong key is refused
            with a suggestion and the list. Per architecture, with defaults (:func:`segpipe.models.model_options`):
            MODEL_OPTIONS
        loss: ``dice``, ``ce``, ``dice_ce``, ``focal``, ``tversky``, ``dice_focal`` or ``dice_tversky``
            (docs/losses.md).
        class_weights: one weight per class for both loss terms.
        ignore_index: label value excluded from loss and metrics.
        lambda_dice: weight of the Dice term of ``dice_ce``.
        lambda_ce: weight of the CE term of ``dice_ce``.
        loss_kwargs: options of the loss terms: ``focal_gamma``, ``tversky_alpha``, ``tversky_beta``,
            ``lambda_focal``, ``lambda_tversky`` (see :class:`segpipe.losses.SegmentationLoss`).
        class_names: names used in metric keys (default ``class0``, ``class1``, ...).
        optimizer: optimiser factory (AdamW, lr 1e-3, weight decay 1e-4 by default).
        lr_scheduler: scheduler factory; ``ReduceLROnPlateau`` monitors ``val/dice``;
            :class:`~segpipe.tasks.schedules.CosineToEnd` anneals over the whole run (no ``T_max``).
        inference_roi: window size for sliding-window inference at val/test/predict (volumes and large
            images, MONAI's ``sliding_window_inference``); ``None`` runs the whole input at once.
        inference_overlap: overlap between neighbouring windows.
        inference_batch_size: windows per forward pass (for a 2D network on volumes: slices per pass).
        inference_sw_device: device the windows run on at predict (MONAI's ``sw_device``, e.g. ``cuda``);
            ``null``: the network's.
        inference_device: device the whole-input probabilities are stitched and TTA-averaged on at predict
            (MONAI's ``device``, e.g. ``cpu`` so that a large volume's (K, X, Y, Z) probabilities stay off
            the GPU); ``null``: the network's. Validation and test keep float32 logits on the network's device.
        inference_dtype: dtype of the stitched probabilities at predict: ``auto`` (float16 when stitching
            on CUDA, float32 elsewhere), ``float32`` or ``float16``.
        tta: flip test-time augmentation at ``segpipe predict``: class probabilities averaged over the
            input mirrored along every subset of these spatial axes (0-based; ``true``: all axes, 8
            passes in 3D), each flipped back; ``false``: one pass. Validation and test run without it.
        slice_axis: for a 2D network given volumes (B, C, X, Y, Z) at val/test/predict: the axis (0, 1, 2)
            they are cut along and scored slice by slice (``training_mode: slices`` of the
            :class:`~segpipe.data.VolumeDataModule`, whose ``slice_axis`` it must equal).
        encoder_lr: learning rate of the network's pretrained ``encoder`` (encoder_unet, encoder_fcn), the
            rest keeping the optimiser's; ``None``: one learning rate for all.

    Raises:
        ValueError: for an unknown model or loss, ``class_names`` of the wrong length, ``tta`` axes
            outside the spatial dimensions, or an unknown ``inference_dtype``.
    """

    monitor = "val/dice"
    postprocessing: dict[str, Any] | None = None
    """The post-processing decision stored with the model (checkpoint entry ``postprocessing``, chosen on
    validation by :class:`~segpipe.callbacks.PostprocessingSelection`); None: none chosen."""
    apply_postprocessing: bool = True
    """Apply :attr:`postprocessing` at test and predict (the callback's ``enabled`` sets it)."""

    def __init__(
        self,
        model: str = "unet",
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        model_kwargs: dict[str, Any] | None = None,
        loss: LossName = "dice_ce",
        class_weights: list[float] | None = None,
        ignore_index: int | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        loss_kwargs: dict[str, float] | None = None,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        inference_roi: list[int] | None = None,
        inference_overlap: float = 0.5,
        inference_batch_size: int = 4,
        inference_sw_device: str | None = None,
        inference_device: str | None = None,
        inference_dtype: StitchDtype = "auto",
        tta: bool | list[int] = False,
        encoder_lr: float | None = None,
        slice_axis: int = 2,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)

    def configure_models(self) -> None:
        """The network, and how it runs over whole inputs at val/test/predict."""
        h = self.hparams
        self.tta_axes = tta_axes(h.tta, h.spatial_dims)
        self.inference = WindowedInference(
            h.spatial_dims,
            h.inference_roi,
            h.inference_overlap,
            h.inference_batch_size,
            h.slice_axis,
            sw_device=h.inference_sw_device,
            device=h.inference_device,
            dtype=h.inference_dtype,
        )
        options = h.model_kwargs or {}
        check_model_options(h.model, options)  # before the call, which would clash on e.g. in_channels
        self.net = build_model(h.model, h.spatial_dims, h.in_channels, h.num_classes, **options)

    def configure_losses(self) -> None:
        h = self.hparams
        options = dict(h.get("loss_kwargs") or {})
        unknown = sorted(set(options) - set(LOSS_OPTIONS))
        if unknown:
            raise ValueError(f"loss_kwargs: unknown option(s) {unknown}; choose from {', '.join(LOSS_OPTIONS)}")
        self.criterion = SegmentationLoss(
            h.loss,
            h.num_classes,
            h.class_weights,
            h.ignore_index,
            lambda_dice=h.lambda_dice,
            lambda_ce=h.lambda_ce,
            **options,
        )

    def configure_metrics(self) -> None:
        self.train_loss = MeanMetric()
        overlap = OverlapScores(self.hparams.num_classes, self.hparams.ignore_index, self.hparams.class_names)
        self.class_names = overlap.class_names  # class0, class1, ... when none are given
        self.set_stage_metrics(MetricCollection({"overlap": overlap}), stages=("val", "test"))

    def trainable_parameters(self) -> list[Any]:
        return param_groups(self.net, self.hparams.encoder_lr)

    def requirements(self) -> ModelRequirements:
        """What this network expects of its data (checked by the DataModule before a stage runs)."""
        h = self.hparams
        return ModelRequirements(h.num_classes, h.in_channels, h.spatial_dims, h.get("slice_axis", 2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, *spatial)."""
        return self.net(image)

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *spatial) for whole inputs: see :class:`segpipe.inference.WindowedInference`."""
        return self.inference.logits(self.net, image)

    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K, *spatial): softmax of :meth:`infer`, averaged over the ``tta`` flips."""
        return self.inference.probabilities(self.net, image, self.tta_axes)

    def training_loss(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.criterion(self(batch["image"]), batch["mask"])
        # The epoch's mean is a metric so that a checkpoint written mid-epoch carries it (on_save_checkpoint).
        # A non-finite loss enters with weight 0: a batch that NonFiniteGuard skips stays out of the mean.
        value, finite = loss.detach(), torch.isfinite(loss.detach())
        self.train_loss.update(torch.where(finite, value, 0.0), finite * len(batch["image"]))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Mid-epoch, the epoch's running train/loss, so that a resumed epoch logs the whole epoch's mean.
        # (Lightning has no public "last batch of the epoch": num_training_batches is inf for iterable data.)
        if not self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            checkpoint[TRAIN_LOSS_KEY] = {
                "sum": self.train_loss.mean_value.cpu(),
                "weight": self.train_loss.weight.cpu(),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.postprocessing = checkpoint.get(POSTPROCESSING_KEY)
        running = checkpoint.get(TRAIN_LOSS_KEY)
        if running is not None and self.trainer.world_size == 1:  # on N processes it holds rank 0's part only
            device = self.train_loss.mean_value.device
            self.train_loss.mean_value, self.train_loss.weight = running["sum"].to(device), running["weight"].to(device)

    def postprocessing_rule(self) -> dict[int, str]:
        """The ``{class: option}`` rule applied at test and predict (empty when none or switched off)."""
        return rule_of(self.postprocessing) if self.apply_postprocessing else {}

    def _evaluate(self, batch: dict[str, Any], stage: str, rule: dict[int, str] | None = None) -> torch.Tensor:
        logits = self.infer(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["image"]))
        labels = apply_rule_to_batch(logits.argmax(1), rule or {})
        self.stage_metrics(stage).update(labels, batch["mask"])
        return labels

    def _log_scores(self, stage: str) -> None:
        metrics = self.stage_metrics(stage)
        scores = metrics.compute()
        metrics.reset()
        if stage == "test":
            # The split's pixels pooled: named so, beside the per-case means of the test report.
            self.log_dict({POOLED.sub(r"test/\1_pooled", key): value for key, value in scores.items()})
            return
        mean_dice = scores.pop(f"{stage}/dice")
        self.log_dict(scores)
        self.log(f"{stage}/dice", mean_dice, prog_bar=True)
        self.log_best(mean_dice)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Scores the batch and returns ``{"prediction": (B, *spatial) labels}`` for per-case reports; the
        labels are post-processed by the stored rule (:meth:`postprocessing_rule`) before both."""
        return {"prediction": self._evaluate(batch, "test", self.postprocessing_rule())}

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """``{"name": [str], "probabilities": (B, K, *spatial) float, "mask": (B, *spatial) labels}``.

        With a post-processing rule, the mask is post-processed and the voxels it removed get background
        probability 1, so that a writer mapping the probabilities to the input's grid (volumes) writes the
        post-processed mask.
        """
        probabilities = self.predict_probabilities(batch["image"])
        labels, rule = probabilities.argmax(1), self.postprocessing_rule()
        if rule:
            cleaned = apply_rule_to_batch(labels, rule)
            removed = (cleaned != labels).unsqueeze(1)
            background = torch.zeros(probabilities.shape[1], dtype=probabilities.dtype, device=probabilities.device)
            background[0] = 1.0
            spread = background.view(1, -1, *[1] * (probabilities.ndim - 2))  # broadcast over batch and space
            probabilities = torch.where(removed, spread, probabilities)
            labels = cleaned
        return {"name": batch["name"], "probabilities": probabilities, "mask": labels}


# `segpipe fit --help` shows the docstring: each architecture's options are listed there, read from the
# builders' signatures so that the help cannot drift from the code.
SegmentationTask.__doc__ = (SegmentationTask.__doc__ or "").replace(
    "MODEL_OPTIONS", "\n            ".join(f"{line};" for line in describe_model_options())
)
