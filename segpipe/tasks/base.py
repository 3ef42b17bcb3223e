"""BaseTask: the skeleton every segpipe LightningModule shares (torchgeo's trainers/base.py pattern).

``__init__`` saves the hyperparameters, then calls :meth:`BaseTask.configure_models`,
:meth:`BaseTask.configure_losses` and :meth:`BaseTask.configure_metrics`, which subclasses implement;
:meth:`BaseTask.configure_optimizers` is shared: the optimiser on :meth:`BaseTask.trainable_parameters`,
the scheduler stepped per epoch, ``ReduceLROnPlateau`` monitoring :attr:`BaseTask.monitor`, and a
:class:`~segpipe.tasks.schedules.RunLengthSchedule` given the Trainer's length.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MetricCollection

from segpipe.tasks.schedules import RunLengthSchedule, run_length

STAGES = ("train", "val", "test")
BEST_SCORE_KEY = "best_score"

LossCheck = Callable[[torch.Tensor], bool]
"""Given a training loss: True to train on it, False to skip the batch; it may also raise to stop."""


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-3, weight decay 1e-4: the optimiser of a config that names none."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class BaseTask(pl.LightningModule, abc.ABC):
    """Hyperparameters saved, then models, losses and metrics configured; one optimiser set-up.

    A subclass's ``class_names``, when given, must have ``num_classes`` names.

    Args:
        optimizer: optimiser factory, called with :meth:`trainable_parameters`.
        lr_scheduler: scheduler factory, called with the optimiser; ``None``: a constant learning rate.
    """

    monitor: ClassVar[str]
    """The metric a ``ReduceLROnPlateau`` schedule watches, e.g. ``val/dice`` (the checkpoint monitor's too)."""

    def __init__(
        self,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        # Collects the subclass's __init__ arguments too (Lightning walks the __init__ frames); the factories
        # are callables, kept out of the checkpoint. Not sent to loggers: a run's params are the short
        # headline ones of segpipe.tracking.config, the whole config its artifact.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"], logger=False)
        names, count = self.hparams.get("class_names"), self.hparams.get("num_classes")
        if names is not None and count is not None and len(names) != count:
            raise ValueError(f"class_names has {len(names)} names, expected num_classes={count}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.loss_checks: list[LossCheck] = []
        self.best_score: dict[str, float] | None = None  # {"value", "epoch"} of log_best
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @abc.abstractmethod
    def configure_models(self) -> None:
        """Build the network(s) from ``self.hparams``."""

    @abc.abstractmethod
    def configure_losses(self) -> None:
        """Build the training criterion from ``self.hparams``."""

    @abc.abstractmethod
    def configure_metrics(self) -> None:
        """Build the metrics: one collection handed to :meth:`set_stage_metrics`."""

    def set_stage_metrics(self, metrics: MetricCollection, stages: Sequence[str] = STAGES) -> None:
        """Clone ``metrics`` once per stage with the prefix ``<stage>/`` (``val/dice``, ...), as
        ``self.<stage>_metrics``; :meth:`stage_metrics` returns them."""
        for stage in stages:
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))

    def stage_metrics(self, stage: str) -> MetricCollection:
        """The metric collection of ``stage`` (``train``, ``val`` or ``test``) set by :meth:`set_stage_metrics`."""
        return getattr(self, f"{stage}_metrics")

    def log_best(self, value: torch.Tensor) -> None:
        """Keep the best (highest) value of :attr:`monitor` over the epochs and log it with its epoch, as
        ``<monitor>_best`` (``val/dice_best``) and ``best_epoch``; called with each epoch's monitored value.

        Sanity-check epochs and NaN values are left out. The best survives a resume: it travels in the
        checkpoint (:meth:`on_save_checkpoint`).
        """
        if self.trainer.sanity_checking or torch.isnan(value):
            return
        if self.best_score is None or float(value) > self.best_score["value"]:
            self.best_score = {"value": float(value), "epoch": self.current_epoch}
        self.log(f"{self.monitor}_best", self.best_score["value"])
        self.log("best_epoch", float(self.best_score["epoch"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.best_score is not None:
            checkpoint[BEST_SCORE_KEY] = dict(self.best_score)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_score = checkpoint.get(BEST_SCORE_KEY)

    @abc.abstractmethod
    def training_loss(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The loss of one training batch (logging it as it likes)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """:meth:`training_loss`, or ``None`` when one of :attr:`loss_checks` rejects it: Lightning then
        skips backward and the optimiser step (also under AMP's GradScaler). Callbacks such as
        :class:`~segpipe.callbacks.NonFiniteGuard` add their checks to ``loss_checks`` for a fit, since no
        callback hook sits between the loss and backward that could veto the step."""
        loss = self.training_loss(batch, batch_idx)
        return loss if all(accept(loss) for accept in self.loss_checks) else None

    def trainable_parameters(self) -> Iterable[Any]:
        """What the optimiser is given: the parameters with ``requires_grad`` (or parameter groups)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, RunLengthSchedule):
            length, config["interval"] = run_length(self.trainer)
            scheduler.set_run_length(length)
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
