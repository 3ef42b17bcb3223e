"""Speed options (channels_last, torch.compile) and the batch-size / learning-rate statement of a run."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from segpipe.errors import SegpipeError


def effective_batch_size(trainer: pl.Trainer, batch_size: int) -> int:
    """Cases per optimiser step: ``batch_size x devices x num_nodes x accumulate_grad_batches``."""
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def scaling_statement(trainer: pl.Trainer, batch_size: int, lr: float) -> str:
    """One line on the effective batch size and the learning-rate rule in use (none: no rescaling)."""
    processes = trainer.world_size
    factor = processes * trainer.accumulate_grad_batches
    return (
        f"effective batch size {effective_batch_size(trainer, batch_size)} = batch_size {batch_size} x "
        f"{processes} processes ({trainer.num_devices} devices x {trainer.num_nodes} nodes) x "
        f"accumulate_grad_batches {trainer.accumulate_grad_batches}; learning rate {lr:g} is used as "
        f"configured (segpipe does not rescale it); the linear scaling rule would use "
        f"{lr:g} x {factor} = {lr * factor:g}"
    )


class PerformanceFlags(pl.Callback):
    """Memory layout and compilation of the network, and the scale of the run stated at fit start.

    Mixed precision (``trainer.precision``), cuDNN autotuning (``trainer.benchmark``), devices, nodes,
    strategy and SyncBatchNorm (``trainer.sync_batchnorm``) are Trainer options; this callback adds
    what the Trainer does not do.

    Args:
        channels_last: store the weights and 2D input batches as NHWC (faster convolutions with
            tensor cores under mixed precision; 2D models only).
        compile: compile the network with ``torch.compile`` (in place: checkpoints keep their keys).
            The first steps are slow while it compiles; on CPU it needs a C++ compiler.

    Raises:
        SegpipeError: ``channels_last`` with a 3D model, ``compile`` with a task that has no ``net``,
            or ``trainer.sync_batchnorm`` for a multi-process run on CPU (SyncBatchNorm is GPU-only).
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last = channels_last
        self.compile = compile

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        spatial_dims = getattr(pl_module, "hparams", {}).get("spatial_dims", 2)
        if self.channels_last:
            if spatial_dims != 2:
                raise SegpipeError(
                    f"performance.channels_last applies to 2D models; this one has spatial_dims "
                    f"{spatial_dims}: set --performance.channels_last false"
                )
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            net = getattr(pl_module, "net", None)
            if not isinstance(net, nn.Module):
                raise SegpipeError(f"performance.compile needs a task with a `net` module, not {type(pl_module)}")
            net.compile()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        has_sync_bn = any(isinstance(m, nn.SyncBatchNorm) for m in pl_module.modules())
        if has_sync_bn and isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size > 1:
            raise SegpipeError(
                "trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU): "
                "use --trainer.accelerator gpu, or a model without batch norm (model_kwargs.norm group)"
            )
        batch_size = getattr(trainer.datamodule, "batch_size", None)
        if batch_size is None or not trainer.optimizers:
            return
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        rank_zero_info(f"segpipe: {scaling_statement(trainer, batch_size, lr)}")
        if trainer.ckpt_path is not None:  # a resumed run has its params already (MLflow keeps them fixed)
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(
                {
                    "scale.effective_batch_size": effective_batch_size(trainer, batch_size),
                    "scale.world_size": trainer.world_size,
                    "scale.lr_scaling": "none",
                }
            )

    def _to_channels_last(self, batch: Any) -> None:
        if self.channels_last and isinstance(batch, dict) and getattr(batch.get("image"), "ndim", 0) == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self._to_channels_last(batch)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any
    ) -> None:
        self._to_channels_last(batch)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self._to_channels_last(batch)

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self._to_channels_last(batch)
