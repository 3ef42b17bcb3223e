"""Learning-rate schedules whose length is the run's: no ``T_max`` to keep equal to ``max_epochs``.

jsonargparse (4.53) refuses a scheduler class whose required argument (``T_max`` of
``CosineAnnealingLR``, ``total_iters``'s default of ``PolynomialLR``) is left out of the YAML, so these
subclasses take everything but the length, and :class:`segpipe.tasks.base.BaseTask` sets the length
from the Trainer (``max_epochs``, stepped per epoch; else ``max_steps``, stepped per optimiser step)
before the first step::

    lr_scheduler:
      class_path: segpipe.tasks.schedules.CosineToEnd
      init_args: {eta_min: 0.0}
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import lightning.pytorch as pl
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, PolynomialLR

from segpipe.errors import SegpipeError

# The length before the task sets the run's: epoch 0's learning rate is the optimiser's whatever the
# length (both schedules return the base learning rate at their initial step), so it is never used.
_UNSET_LENGTH = 1


@runtime_checkable
class RunLengthSchedule(Protocol):
    """A schedule told its length (epochs or optimiser steps) once the Trainer is known."""

    def set_run_length(self, length: int) -> None: ...


class CosineToEnd(CosineAnnealingLR):
    """``CosineAnnealingLR`` with ``T_max`` = the run's length: from the optimiser's rate to ``eta_min``."""

    def __init__(self, optimizer: Optimizer, eta_min: float = 0.0) -> None:
        super().__init__(optimizer, T_max=_UNSET_LENGTH, eta_min=eta_min)

    def set_run_length(self, length: int) -> None:
        """Anneal over ``length`` epochs (or steps)."""
        self.T_max = _positive(length)


class PolynomialToEnd(PolynomialLR):
    """``PolynomialLR`` with ``total_iters`` = the run's length: from the optimiser's rate to 0."""

    def __init__(self, optimizer: Optimizer, power: float = 1.0) -> None:
        super().__init__(optimizer, total_iters=_UNSET_LENGTH, power=power)

    def set_run_length(self, length: int) -> None:
        """Decay over ``length`` epochs (or steps)."""
        self.total_iters = _positive(length)


def _positive(length: int) -> int:
    if length < 1:
        raise ValueError(f"a schedule's length must be >= 1, got {length}")
    return int(length)


def run_length(trainer: pl.Trainer) -> tuple[int, Literal["epoch", "step"]]:
    """The run's length and the scheduler interval it is counted in: ``max_epochs`` epochs, else
    ``max_steps`` steps.

    Raises:
        SegpipeError: if the Trainer has neither (an unbounded run has no end to anneal to).
    """
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        return trainer.max_epochs, "epoch"
    if trainer.max_steps > 0:
        return trainer.max_steps, "step"
    raise SegpipeError(
        "a schedule to the end of the run (CosineToEnd, PolynomialToEnd) needs trainer.max_epochs or "
        "trainer.max_steps; set one, or give the scheduler's length (e.g. CosineAnnealingLR with T_max)"
    )
