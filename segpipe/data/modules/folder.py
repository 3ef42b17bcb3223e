"""DataModule for folders of 2D images and label masks."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from segpipe.data.checks import DataChecks, DataReport, Expected, check_image_case, check_splits
from segpipe.data.datasets import SegmentationDataset
from segpipe.data.modules.base import SplitDataModule
from segpipe.data.modules.statistics import ImageStatistics
from segpipe.data.sources.pairing import Case, list_files, pair_files
from segpipe.data.splits import SPLITS, split_cases
from segpipe.errors import DataError
from segpipe.io.images import IMAGE_SUFFIXES, MASK_SUFFIXES
from segpipe.transforms import Normalization, build_augmentations


class FolderDataModule(DataChecks, ImageStatistics, SplitDataModule):
    """Images and integer masks paired by file stem.

    Two layouts are read (``layout: auto`` picks by what exists)::

        root/train/images/*.png  root/train/masks/*.png   (and val/, test/)   -> layout "splits"
        root/images/*.png        root/masks/*.png                             -> layout "flat",
                                                           split by val_fraction/test_fraction and split_seed

    Args:
        root: dataset folder.
        images_dir: name of the image subfolder.
        masks_dir: name of the mask subfolder.
        layout: ``auto``, ``splits`` or ``flat``.
        val_fraction: share of cases for validation (flat layout).
        test_fraction: share of cases for testing (flat layout).
        split_seed: seed of the flat-layout shuffle.
        batch_size: training batch size.
        eval_batch_size: batch size for val/test (default: ``batch_size``); use 1 for images of
            different sizes.
        num_workers: DataLoader worker processes.
        pin_memory: page-lock batches for faster host-to-GPU copies.
        normalization: intensity normalisation after augmentation (``zscore`` per image by default;
            ``dataset``: z-score with the mean/std of every training pixel, per channel, see :meth:`statistics`).
        mean: per-channel mean for ``normalization: fixed``.
        std: per-channel std for ``normalization: fixed``.
        train_transforms: albumentations pipeline for training, as a list of ``{name: ..., **args}``.
        eval_transforms: deterministic pipeline for val/test/predict (e.g. a centre crop); none by default.
        cache: keep decoded images in RAM (per worker) after their first read.
        predict_dir: folder of images for ``segpipe predict``.
    """

    def __init__(
        self,
        root: str = "data",
        images_dir: str = "images",
        masks_dir: str = "masks",
        layout: Literal["auto", "splits", "flat"] = "auto",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        normalization: Normalization = "zscore",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        train_transforms: list[dict[str, Any]] | None = None,
        eval_transforms: list[dict[str, Any]] | None = None,
        cache: bool = False,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        # Into checkpoints (plain values only: they are read with weights_only=True); not logged, so the
        # run parameters stay the task's and Lightning never merges keys the two share (slice_axis).
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.images_dir = images_dir
        self.masks_dir = masks_dir
        self.layout = layout
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.normalization = normalization
        self.mean = mean
        self.std = std
        self.predict_dir = predict_dir
        self.cache = cache
        # Build the pipelines now so that a bad transform name fails at start-up, not in a worker.
        self.train_transform = build_augmentations(train_transforms)
        self.eval_transform = build_augmentations(eval_transforms)
        self.predict_batch_size = 1  # images to predict may differ in size

    # ---- discovery -------------------------------------------------------------------------------
    def resolved_layout(self) -> Literal["splits", "flat"]:
        if self.layout != "auto":
            return self.layout
        return "splits" if (self.root / "train").is_dir() else "flat"

    def cases(self) -> dict[str, list[Case]]:
        """The cases of each split.

        Raises:
            DataError: for a missing folder, unpaired files or an empty dataset (the first problem).
        """
        splits, problems = self.discover()
        if problems:
            raise problems[0]
        return splits

    def discover(self) -> tuple[dict[str, list[Case]], list[DataError]]:
        """The paired cases of each split, and one problem per unpaired file or missing/empty folder.

        Raises:
            DataError: when the dataset folder does not exist, or for a bad split fraction.
        """
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        if self.resolved_layout() == "flat":
            cases, problems = self._pair(self.root)
            try:
                splits = split_cases(
                    cases, self.val_fraction, self.test_fraction, self.split_seed, key=attrgetter("name")
                )
                return splits, problems
            except ValueError as err:
                raise DataError(self.root, str(err)) from None
        found: dict[str, list[Case]] = {"train": [], "val": [], "test": []}
        problems = []
        for split in SPLITS:
            if (self.root / split).is_dir():
                found[split], split_problems = self._pair(self.root / split)
                problems += split_problems
            elif split != "test":
                problems.append(DataError(self.root / split, "split folder is missing (layout 'splits')"))
        return found, problems

    def _pair(self, folder: Path) -> tuple[list[Case], list[DataError]]:
        try:
            return pair_files(folder / self.images_dir, folder / self.masks_dir, IMAGE_SUFFIXES, MASK_SUFFIXES)
        except DataError as err:
            return [], [err]

    def predict_cases(self) -> list[Case]:
        if self.predict_dir is None:
            raise DataError(self.root, "no images to predict: set --data.predict_dir <folder>")
        files = list_files(Path(self.predict_dir), IMAGE_SUFFIXES)
        if not files:
            raise DataError(self.predict_dir, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [Case(stem, path) for stem, path in files.items()]

    # ---- validation ------------------------------------------------------------------------------
    def report(self, num_classes: int | None = None, in_channels: int | None = None, stage: str = "fit") -> DataReport:
        """Read every file of the splits ``stage`` uses and report every problem found (see
        :func:`segpipe.data.checks.check_image_case`); without ``in_channels``, channel counts must
        agree across cases, and without ``num_classes`` label values are not checked."""
        expected = Expected(num_classes, in_channels)
        try:
            if stage == "predict":
                splits, problems = {"predict": self.predict_cases()}, []
            else:
                splits, problems = self.discover()
        except DataError as err:
            return DataReport([err])
        return check_splits(self.root, splits, check_image_case, expected, stage, problems)

    def statistics_cases(self) -> list[Case]:
        return self.cases()["train"]

    # ---- datasets (loaders: SplitDataModule) ----------------------------------------------------------
    def split_items(self) -> dict[str, list[Case]]:
        return self.cases()

    def predict_items(self) -> list[Case]:
        return self.predict_cases()

    def make_dataset(self, cases: list[Case], split: str) -> SegmentationDataset:
        return SegmentationDataset(
            cases,
            self.train_transform if split == "train" else self.eval_transform,
            self.normalization,
            self.statistics().get("mean"),
            self.statistics().get("std"),
            cache=self.cache,
        )
