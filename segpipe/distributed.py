"""Data-parallel helpers: samplers that give the same answer on 1 or N processes, and rank checks."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sized

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DistributedSampler, Sampler


class UnrepeatedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``W`` reads cases ``r, r + W, r + 2W, ...``, in order, with no padding.

    ``DistributedSampler`` pads the dataset with repeated cases until its length divides by the world
    size, so a split-level metric would count those cases twice. Here the ranks may read one case more
    or less than each other; metrics summed across ranks then cover every case exactly once.
    Lightning keeps a sampler that is already a ``DistributedSampler`` instead of replacing it.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = math.ceil(max(len(dataset) - rank, 0) / num_replicas)
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class SampleIndex(int):
    """A dataset index that carries the seed of its sample's random augmentation (``.seed``)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SampleIndex:
        value = super().__new__(cls, index)
        value.seed = seed
        return value

    def __reduce__(self) -> tuple[type[SampleIndex], tuple[int, int]]:  # to DataLoader workers and back
        return type(self), (int(self), self.seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of case ``index`` in ``epoch`` of a run seeded with ``seed`` (32 bits)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


class TrainingSampler(DistributedSampler):
    """A seeded permutation per epoch whose indices carry per-sample augmentation seeds; resumable mid-epoch.

    Each index is a :class:`SampleIndex` seeded from (run seed, epoch, index), so a case's augmentation in an
    epoch does not depend on the number of processes or DataLoader workers, nor on where a run was
    interrupted and resumed. ``skip`` drops the first indices of the next pass only: a resumed epoch
    continues where its checkpoint was written (see :class:`segpipe.data.resumable.ResumableDataLoader`).
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[SampleIndex]:
        skip, self.skip = self.skip, 0
        indices, epoch = list(super().__iter__())[skip:], self.epoch
        return (SampleIndex(i, sample_seed(self.seed, epoch, i)) for i in indices)


def run_seed() -> int:
    """The run's seed, as ``seed_everything`` exported it (0 without one; the CLI always sets one)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def training_sampler(dataset: Sized, trainer: pl.Trainer | None) -> TrainingSampler:
    """The training sampler on one process or several: a permutation seeded by the run's seed.

    Rank ``r`` of ``W`` reads ``perm[r::W]`` (Lightning's own choice for DDP), so the ranks' ``k``-th
    batches of ``b`` cases together are the ``k``-th batch of a 1-process run with batch ``W x b``:
    the same seed gives the same global batches, and the same augmentations, whatever the number of
    processes. Lightning calls ``set_epoch``, so each epoch has its own permutation.
    """
    world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    return TrainingSampler(dataset, num_replicas=world_size, rank=rank, seed=run_seed())


def evaluation_sampler(dataset: Sized, trainer: pl.Trainer | None) -> UnrepeatedDistributedSampler | None:
    """The sampler of a val/test DataLoader: unrepeated shards on several processes, else ``None``."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, trainer.world_size, trainer.global_rank)


def loader_sampling(
    dataset: Sized, trainer: pl.Trainer | None, split: str, batch_size: int, shuffle: bool
) -> tuple[Sampler | None, bool]:
    """``(sampler, drop_last)`` of the DataLoader of ``split`` on one process or several.

    Training (``shuffle``): :func:`training_sampler`; each rank reads about ``len / world_size``
    cases, so a ragged last batch is dropped only when a rank has more than one batch. Val/test:
    :func:`evaluation_sampler`. Predict: no sampler (in order).
    """
    world_size = trainer.world_size if trainer is not None else 1
    if shuffle:
        sampler: Sampler | None = training_sampler(dataset, trainer)
    elif split in ("val", "test"):
        sampler = evaluation_sampler(dataset, trainer)
    else:
        sampler = None
    return sampler, shuffle and len(dataset) > batch_size * world_size


def is_local_zero(trainer: pl.Trainer) -> bool:
    """Whether this process has local rank 0 on its node, before or after the processes are launched.

    Read from the cluster environment (torchrun's ``LOCAL_RANK``, SLURM's ``SLURM_LOCALID``, the
    variables Lightning sets for the processes it starts), so it holds in code that runs before
    ``trainer.fit`` sets the ranks.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return environment is None or environment.local_rank() == 0
