"""DataModule for image classification folders: one subfolder of images per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from segpipe.data.datasets import SegmentationDataset
from segpipe.data.modules.base import SplitDataModule
from segpipe.data.modules.statistics import ImageStatistics
from segpipe.data.sources.pairing import Case, list_files
from segpipe.data.splits import SPLITS, stratified_split
from segpipe.errors import DataError
from segpipe.io.images import IMAGE_SUFFIXES
from segpipe.transforms import Normalization, build_augmentations

Labelled = list[tuple[Case, int]]


class ClassificationDataset(Dataset):
    """Yields ``{"image": (C, H, W) float32, "label": int64 scalar, "name": str}`` for labelled images.

    Reading, augmentation and normalisation are those of :class:`SegmentationDataset`.
    """

    def __init__(self, items: Labelled, transform: Any, normalization: Normalization, mean: Any, std: Any) -> None:
        self.images = SegmentationDataset([case for case, _ in items], transform, normalization, mean, std)
        self.labels = [label for _, label in items]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.images[index]
        sample["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        return sample


class ClassificationFolderDataModule(ImageStatistics, SplitDataModule):
    """Images sorted into one subfolder per class; labels follow the sorted class names.

    Layouts (``layout: auto`` picks by what exists)::

        root/<class>/*.png                                   -> "flat", split per class by the fractions
        root/train/<class>/*.png  root/val/<class>/*.png  (root/test/<class>/)  -> "splits"

    Args:
        root: dataset folder.
        layout: ``auto``, ``splits`` or ``flat``.
        val_fraction: share of each class for validation (flat layout).
        test_fraction: share of each class for testing (flat layout).
        split_seed: seed of the flat-layout split.
        batch_size: training batch size.
        eval_batch_size: batch size for val/test/predict (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        normalization: intensity normalisation (as in :class:`segpipe.data.FolderDataModule`; ``dataset``:
            the mean/std of the training split's pixels, see :meth:`statistics`).
        mean: per-channel mean for ``normalization: fixed``.
        std: per-channel std for ``normalization: fixed``.
        train_transforms: albumentations pipeline for training, as a list of ``{name: ..., **args}``.
        eval_transforms: deterministic pipeline for val/test/predict.
        predict_dir: folder of images for ``segpipe classify predict``.
    """

    def __init__(
        self,
        root: str = "data",
        layout: Literal["auto", "splits", "flat"] = "auto",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        normalization: Normalization = "zscore",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        train_transforms: list[dict[str, Any]] | None = None,
        eval_transforms: list[dict[str, Any]] | None = None,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        # Into checkpoints (plain values only: they are read with weights_only=True); not logged, so the
        # run parameters stay the task's and Lightning never merges keys the two share (slice_axis).
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.layout = layout
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.normalization = normalization
        self.mean = mean
        self.std = std
        self.predict_dir = predict_dir
        self.train_transform = build_augmentations(train_transforms)
        self.eval_transform = build_augmentations(eval_transforms)

    def resolved_layout(self) -> Literal["splits", "flat"]:
        if self.layout != "auto":
            return self.layout
        return "splits" if (self.root / "train").is_dir() and (self.root / "val").is_dir() else "flat"

    def class_names(self) -> list[str]:
        """Sorted class subfolder names (of ``root``, or of ``root/train`` in the splits layout).

        Raises:
            DataError: if the folder is missing or has fewer than two class subfolders.
        """
        folder = self.root / "train" if self.resolved_layout() == "splits" else self.root
        if not folder.is_dir():
            raise DataError(folder, "dataset folder does not exist")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(names) < 2:
            raise DataError(folder, f"needs one subfolder per class (at least 2), found {names}")
        return names

    def _items(self, folder: Path, names: list[str]) -> Labelled:
        items: Labelled = []
        for label, name in enumerate(names):
            files = list_files(folder / name, IMAGE_SUFFIXES) if (folder / name).is_dir() else {}
            items += [(Case(f"{name}/{stem}", path), label) for stem, path in files.items()]
        return items

    def splits(self) -> dict[str, Labelled]:
        """Labelled images of each split.

        Raises:
            DataError: for a missing folder, fewer than two classes, or an empty train or val split.
        """
        names = self.class_names()
        if self.resolved_layout() == "flat":
            found = stratified_split(
                self._items(self.root, names), self.val_fraction, self.test_fraction, self.split_seed
            )
        else:
            found = {s: self._items(self.root / s, names) if (self.root / s).is_dir() else [] for s in SPLITS}
        for split in ("train", "val"):
            if not found[split]:
                raise DataError(self.root, f"the {split} split holds no images")
        return found

    # ---- datasets (loaders: SplitDataModule) ----------------------------------------------------------
    def split_items(self) -> dict[str, Labelled]:
        return self.splits()

    def predict_items(self) -> Labelled:
        """The images of ``predict_dir``, labelled -1.

        Raises:
            DataError: if ``predict_dir`` is not set or holds no images.
        """
        if self.predict_dir is None:
            raise DataError(self.root, "no images to predict: set --data.predict_dir <folder>")
        files = list_files(Path(self.predict_dir), IMAGE_SUFFIXES)
        if not files:
            raise DataError(self.predict_dir, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [(Case(stem, path), -1) for stem, path in files.items()]

    def statistics_cases(self) -> list[Case]:
        return [case for case, _ in self.splits()["train"]]

    def make_dataset(self, items: Labelled, split: str) -> ClassificationDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        statistics = self.statistics()
        return ClassificationDataset(
            items, transform, self.normalization, statistics.get("mean"), statistics.get("std")
        )
