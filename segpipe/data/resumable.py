"""A training DataLoader that continues an interrupted epoch where its checkpoint was written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from segpipe.distributed import TrainingSampler, run_seed
from segpipe.errors import SegpipeError


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`~segpipe.distributed.TrainingSampler` whose place in the epoch is checkpointed.

    Lightning saves ``state_dict()`` of a training loader that has one in every checkpoint, and calls
    ``load_state_dict`` before iterating again when it restarts from a checkpoint written mid-epoch;
    a plain DataLoader would start that epoch over from its first batch (Lightning warns so), reading
    some cases twice and others never. The state is the epoch and the number of batches handed out;
    the next pass over that epoch asks the sampler to skip those batches' indices, so the resumed epoch
    yields exactly the batches the uninterrupted one had left.

    Iteration is lazy: the underlying iterator (and its workers' first indices) is created at the first
    ``next()``, after Lightning's ``set_epoch`` for the epoch. Lightning creates the iterator of a
    resumed epoch before calling ``set_epoch``, which with workers would give it epoch 0's permutation.
    Unless a ``generator`` is given, the loader draws its workers' base seed from its own generator, so
    starting an epoch leaves the global random state (dropout) as it was, resumed or not.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator().manual_seed(run_seed()))
        super().__init__(*args, **kwargs)
        self._batches = 0  # handed out in the current pass
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        start = resume["batches"] if resume is not None and resume["epoch"] == self._epoch() else 0
        if start and not isinstance(self.sampler, TrainingSampler):  # Lightning swapped it (overfit_batches)
            rank_zero_warn(f"the interrupted epoch restarts from its first batch ({type(self.sampler).__name__})")
            start = 0
        if start:
            self.sampler.skip = start * int(self.batch_size or 1)
        self._batches = start
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": self._batches, "batch_size": int(self.batch_size or 1)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue ``state["epoch"]`` after its first ``state["batches"]`` batches (if that epoch comes next).

        Raises:
            SegpipeError: the checkpoint was written mid-epoch with another batch size.
        """
        size = int(self.batch_size or 1)
        if state.get("batch_size", size) != size and 0 < state["batches"] < len(self):
            raise SegpipeError(
                f"the checkpoint was written mid-epoch with batch_size {state['batch_size']}, this run has {size}: "
                "resume with the same batch size, or from a checkpoint written at the end of an epoch"
            )
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
