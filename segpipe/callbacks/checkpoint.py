"""ModelCheckpoint that keeps ``last.ckpt`` current for resuming and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from segpipe.errors import TrainingInterrupted


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (best ``save_top_k`` on ``monitor``, ``last.ckpt``) made for kill-and-resume.

    - ``last.ckpt`` is written after every validation (Lightning 2.6 writes it then only when a top-k
      file was written at the same step) and, with ``last_every_n_train_steps``, every N optimiser steps
      inside an epoch. Never at an epoch's last batch: Lightning resumes such a checkpoint at the next
      epoch, so that epoch's validation would be lost; a kill during validation resumes from the step
      before and replays the rest of the epoch.
    - SIGTERM (a scheduler's notice; Lightning records it) or SIGINT (Ctrl+C, caught here in training;
      a second one stops at once) ends training after the current step or validation: ``last.ckpt`` is
      written, then :class:`~segpipe.errors.TrainingInterrupted` is raised (exit code 128 + signal).
    - A model with a non-finite weight is never written: the previous file is kept.

    Args:
        last_every_n_train_steps: also write ``last.ckpt`` every N optimiser steps (0: only after each
            validation). A kill then loses at most N steps; each write costs the checkpoint's size in I/O.
        **kwargs: ModelCheckpoint's arguments (``monitor``, ``save_top_k``, ``save_last``, ...).
    """

    def __init__(self, last_every_n_train_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if last_every_n_train_steps < 0:
            raise ValueError(f"last_every_n_train_steps must be >= 0, got {last_every_n_train_steps}")
        self.last_every_n_train_steps = last_every_n_train_steps
        self._sigint = False
        self._previous_sigint: Any = None

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: a checkpoint written by a plain ModelCheckpoint (segpipe before this class)
        # still restores its best and last paths.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    # ---- last.ckpt on schedule -------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0  # nothing half-accumulated
        # Lightning has no public "last batch of the epoch" (num_training_batches is inf for iterable data).
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or not stepped:
            return  # the epoch's end is checkpointed after validation
        every, signum = self.last_every_n_train_steps, self._stop_signal(trainer)
        due = bool(signum) or (every > 0 and trainer.global_step % every == 0)
        # ModelCheckpoint's protected methods: its public API has no "write last.ckpt now" (below too).
        if due and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if signum:
            self._interrupt(trainer, signum)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # ModelCheckpoint's own rule for where an epoch is checkpointed (protected: no public equivalent).
        if not trainer.sanity_checking and not self._should_save_on_train_epoch_end(trainer):
            self._after_epoch(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's usual point: after the epoch's validation, when that runs once at the epoch's end
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._after_epoch(trainer)

    def _after_epoch(self, trainer: pl.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # nothing written at this step yet
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if signum := self._stop_signal(trainer):
            self._interrupt(trainer, signum)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # ModelCheckpoint's one writer for best, top-k and last; no public hook can veto a write.
        bad = _first_nonfinite_parameter(trainer.lightning_module)
        if bad is not None:
            rank_zero_warn(f"not writing {filepath}: parameter {bad} is not finite; the previous file is kept")
            return
        super()._save_checkpoint(trainer, filepath)

    # ---- SIGTERM / SIGINT ------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not at fit start: Lightning saves every handler after that hook and puts them back at its teardown.
        self._sigint = False
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._sigint:
            raise KeyboardInterrupt
        self._sigint = True
        print(
            "segpipe: SIGINT: stopping after the current step and writing last.ckpt (Ctrl+C again stops at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        super().on_exception(trainer, pl_module, exception)

    def _stop_signal(self, trainer: pl.Trainer) -> int:
        """The signal that asks this run to stop (0: none); on several processes, any rank's request."""
        signum = signal.SIGINT if self._sigint else signal.SIGTERM if trainer.received_sigterm else 0
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(bool(signum), all=False):
            signum = signum or signal.SIGTERM
        return int(signum)

    def _interrupt(self, trainer: pl.Trainer, signum: int) -> None:
        where = self.last_model_path or "no checkpoint was written"
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"last checkpoint: {where}; resume with --ckpt_path last",
            signum,
        )


def _first_nonfinite_parameter(module: torch.nn.Module) -> str | None:
    named = [(name, p) for name, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]
