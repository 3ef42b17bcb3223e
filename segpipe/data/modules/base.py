"""DataModule base for datasets held per split: setup from the subclass's splits, loaders with DDP samplers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from segpipe.data.resumable import ResumableDataLoader
from segpipe.data.splits import SPLITS
from segpipe.distributed import loader_sampling


class SplitDataModule(pl.LightningDataModule, ABC):
    """Builds one dataset per split in :meth:`setup` and serves them with segpipe's samplers.

    Training batches come from :func:`~segpipe.distributed.training_sampler` (the same global batches on
    1 or N processes for one seed), val/test from :func:`~segpipe.distributed.evaluation_sampler` (every
    case once across ranks, no padding with repeated cases).

    Training loaders are :class:`~segpipe.data.resumable.ResumableDataLoader`s: an interrupted epoch
    resumes with exactly the batches it had left.

    Subclasses set ``batch_size``, ``eval_batch_size``, ``num_workers`` (and optionally ``pin_memory``,
    ``predict_batch_size``) and implement :meth:`split_items`, :meth:`predict_items` and
    :meth:`make_dataset`; they may narrow :meth:`stage_splits` (datasets that are costly to build) and
    choose a :meth:`collate_fn` per split.
    """

    batch_size: int
    eval_batch_size: int
    num_workers: int
    pin_memory: bool = False
    predict_batch_size: int | None = None  # None: eval_batch_size

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    @abstractmethod
    def split_items(self) -> dict[str, list[Any]]:
        """The items (cases, labelled cases, ...) of each split, by split name."""

    @abstractmethod
    def predict_items(self) -> list[Any]:
        """The items of ``segpipe predict``."""

    @abstractmethod
    def make_dataset(self, items: list[Any], split: str) -> Dataset:
        """The dataset of ``split``'s ``items`` (``train``: the training transform; ``predict``: no labels)."""

    def stage_splits(self, stage: str) -> Sequence[str]:
        """The splits :meth:`setup` builds datasets for in ``stage`` (all three by default)."""
        return SPLITS

    def collate_fn(self, split: str) -> Callable[[list[Any]], Any] | None:
        """How the items of ``split`` become a batch (None: PyTorch's default collate)."""
        return None

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.datasets["predict"] = self.make_dataset(self.predict_items(), "predict")
            return
        items = self.split_items()
        for split in self.stage_splits(stage):
            self.datasets[split] = self.make_dataset(items[split], split)

    def loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        """The DataLoader of ``split``; ``shuffle`` for training (seeded, rank-sharded)."""
        dataset = self.datasets[split]
        sampler, drop_last = loader_sampling(dataset, self.trainer, split, batch_size, shuffle)
        # Training resumes mid-epoch where its checkpoint was written; evaluation always runs whole.
        return (ResumableDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
            collate_fn=self.collate_fn(split),
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict", self.predict_batch_size or self.eval_batch_size, shuffle=False)
