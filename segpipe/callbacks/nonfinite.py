"""Stop training, or skip the batch, when the training loss is NaN or infinite."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from segpipe.errors import NonFiniteLossError

SKIPPED_METRIC = "train/nonfinite_skipped"


class NonFiniteGuard(pl.Callback):
    """Check every training loss after the forward pass, before backward and the optimiser step.

    The check is one of the task's ``loss_checks`` (:meth:`segpipe.tasks.base.BaseTask.training_step`)
    during a fit: a rejected loss makes ``training_step`` return ``None``, so Lightning skips backward and
    the optimiser step.

    The weights never take a non-finite update, so no checkpoint (``last.ckpt``, best) holds one.

    Args:
        on_nonfinite: ``stop``: raise :class:`~segpipe.errors.NonFiniteLossError` naming the epoch and step
            (``segpipe fit`` exits with code 3); the checkpoints on disk are those of the last good step.
            ``skip``: drop the batch (no backward, no optimiser step) with a warning, and log the running
            count of skipped batches as ``train/nonfinite_skipped`` at each epoch's end.
            ``off``: no check (a non-finite loss then updates the weights, as in plain Lightning).

    On several processes the decision is shared: one rank's non-finite loss stops or skips on all of them.
    The check reads the loss on the host, which on a GPU is one synchronisation per step (and, on several
    processes, an all-reduce of one flag); ``off`` removes it for throughput measurements.
    """

    def __init__(self, on_nonfinite: Literal["stop", "skip", "off"] = "stop") -> None:
        if on_nonfinite not in ("stop", "skip", "off"):
            raise ValueError(f"on_nonfinite must be 'stop', 'skip' or 'off', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.skipped = 0
        self._registered: Callable[[torch.Tensor], bool] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.on_nonfinite == "off":
            return
        checks = getattr(pl_module, "loss_checks", None)
        if not isinstance(checks, list):
            raise TypeError(
                f"NonFiniteGuard needs a segpipe task (segpipe.tasks.base.BaseTask, whose training_step runs "
                f"loss_checks); {type(pl_module).__name__} has none"
            )
        self._registered = functools.partial(self._accepts, trainer)
        checks.append(self._registered)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        checks = getattr(pl_module, "loss_checks", [])
        if stage == "fit" and self._registered in checks:
            checks.remove(self._registered)

    def _accepts(self, trainer: pl.Trainer, loss: torch.Tensor) -> bool:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return True
        value = float(loss.detach().float().mean()) if loss.numel() else math.nan
        # The loop's batch_idx: a loss check is not given the batch index, and no public property holds it.
        where = (
            f"at epoch {trainer.current_epoch}, step {trainer.global_step} "
            f"(batch {trainer.fit_loop.epoch_loop.batch_idx + 1} of {trainer.num_training_batches})"
        )
        if self.on_nonfinite == "stop":
            last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) {where}: training stopped before the optimiser step; last "
                f"good checkpoint: {last}; lower the learning rate, check the data, or set "
                "--nan_guard.on_nonfinite skip"
            )
        self.skipped += 1
        rank_zero_warn(f"non-finite training loss ({value}) {where}: batch skipped ({self.skipped} so far)")
        return False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_nonfinite == "skip":
            pl_module.log(SKIPPED_METRIC, float(self.skipped), on_epoch=True, reduce_fx="max")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
