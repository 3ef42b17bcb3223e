"""Planned against actual: the fit's time and the first training step's memory, as a plan predicted them."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

MEMORY_TOLERANCE = 0.25  # warn when the first step needs more than the estimate plus this share


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class TimeBudget(Callback):
    """Log the planned and the actual fit time, per-epoch times, and the first step's memory against the plan.

    Metrics: ``time/planned_s``, ``time/budget_s``, ``time/epoch_s`` (each epoch, validation included),
    ``time/actual_fit_s`` (Lightning's fit: sanity check, epochs, checkpoint writes), ``memory/planned_bytes``
    and ``memory/first_step_bytes``. The fit ends with one line: ``planned 180 s, took 171 s``.

    With ``deadline_seconds``, the fit also stops after an epoch when one more epoch, as long as the median or the last
    of the epochs after the first (validation, checkpoints and logging included; after the first epoch, the
    plan's), would end past it: a machine slower
    than at calibration (other jobs, logging the calibration did not time) ends the run at an epoch's end
    rather than at ``trainer.max_time`` in the middle of one. The learning-rate schedule keeps its planned
    length, so a stopped run ends before its schedule does.

    The first step's memory is the CUDA peak (``torch.cuda.max_memory_allocated``: weights, gradients,
    optimiser state and activations) on a GPU; on the CPU it is the growth of the process's peak resident
    memory during the step, which misses what earlier peaks (data set-up, the sanity check) already reached.

    Args:
        planned_seconds: the plan's fit time (:func:`segpipe.planning.budget.fit_to_budget`; 0: not planned).
        budget_seconds: the time budget the plan was fitted to (0: none).
        deadline_seconds: seconds after the fit's start by which it must end (0: no early stop).
        planned_memory_bytes: the plan's training-memory estimate for one step (0: not checked).
    """

    def __init__(
        self,
        planned_seconds: float = 0.0,
        budget_seconds: float = 0.0,
        deadline_seconds: float = 0.0,
        planned_memory_bytes: int = 0,
    ) -> None:
        self.planned_seconds = planned_seconds
        self.budget_seconds = budget_seconds
        self.deadline_seconds = deadline_seconds
        self.planned_memory_bytes = planned_memory_bytes
        self._fit_started = self._epoch_started = 0.0
        self._epoch_times: list[float] = []
        self._memory_before: int | None = None
        self._validated_epoch = -1

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self._epoch_times.append(now - self._epoch_started)
        _log(trainer, {"time/epoch_s": self._epoch_times[-1]})
        # The first epoch pays one-off costs (the first figures and MLflow writes): after it, the plan's epoch
        # stands in; later, the median of the later epochs, or the last one when the machine slowed down.
        later = self._epoch_times[1:] or [self.planned_seconds / max(trainer.max_epochs or 1, 1)]
        next_epoch = max(statistics.median(later), later[-1])
        if not self.deadline_seconds or now - self._fit_started + next_epoch <= self.deadline_seconds:
            return
        if self._validated_epoch != trainer.current_epoch:
            # Stopping now would leave this epoch's training unscored (no best checkpoint when no validation
            # has run yet): the next epoch validates, then the fit stops.
            trainer.check_val_every_n_epoch = 1
            rank_zero_info(f"segpipe: epoch {trainer.current_epoch} ends near the plan's deadline: validating next")
            return
        trainer.should_stop = True
        rank_zero_info(
            f"segpipe: stopping after epoch {trainer.current_epoch}: one more ({next_epoch:.1f} s) would end "
            f"past the plan's {self.deadline_seconds:.0f} s"
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates at an epoch's end before on_train_epoch_end: the epoch is scored when we get there.
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        if trainer.global_step != 0 or not self.planned_memory_bytes:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
            self._memory_before = 0
        else:
            self._memory_before = peak_rss_bytes()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if self._memory_before is None:
            return
        if pl_module.device.type == "cuda":
            measured = int(torch.cuda.max_memory_allocated(pl_module.device))
        else:
            measured = peak_rss_bytes() - self._memory_before
        self._memory_before = None
        _log(trainer, {"memory/planned_bytes": self.planned_memory_bytes, "memory/first_step_bytes": measured})
        if measured > self.planned_memory_bytes * (1 + MEMORY_TOLERANCE):
            rank_zero_warn(
                f"the first training step used {measured / 2**20:.1f} MiB, more than the plan's estimate of "
                f"{self.planned_memory_bytes / 2**20:.1f} MiB + {MEMORY_TOLERANCE:.0%}: a larger patch or "
                "batch than planned may not fit"
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        actual = time.perf_counter() - self._fit_started
        metrics = {"time/actual_fit_s": actual}
        if self.planned_seconds:
            metrics["time/planned_s"] = self.planned_seconds
        if self.budget_seconds:
            metrics["time/budget_s"] = self.budget_seconds
        _log(trainer, metrics)
        planned = f"planned {self.planned_seconds:.0f} s, " if self.planned_seconds else ""
        budget = f" (budget {self.budget_seconds:.0f} s)" if self.budget_seconds else ""
        rank_zero_info(f"segpipe: fit {planned}took {actual:.0f} s{budget}")


def _log(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """``metrics`` to every logger at the current step (outside Lightning's ``self.log``, which a fit's end refuses)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
