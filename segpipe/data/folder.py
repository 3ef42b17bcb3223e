"""DataModule for folders of 2D images and label masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from segpipe.data.datasets import SegmentationDataset
from segpipe.data.io2d import IMAGE_SUFFIXES, MASK_SUFFIXES, read_image, read_mask
from segpipe.data.pairing import Case, list_files, pair_by_stem, split_cases
from segpipe.data.resumable import ResumableDataLoader
from segpipe.distributed import evaluation_sampler, training_sampler
from segpipe.errors import DataError
from segpipe.transforms import Normalization, build_augmentations

SPLITS = ("train", "val", "test")


class FolderDataModule(pl.LightningDataModule):
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
        normalization: intensity normalisation after augmentation (``zscore`` per image by default).
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
        self.datasets: dict[str, SegmentationDataset] = {}

    # ---- discovery -------------------------------------------------------------------------------
    def resolved_layout(self) -> Literal["splits", "flat"]:
        if self.layout != "auto":
            return self.layout
        return "splits" if (self.root / "train").is_dir() else "flat"

    def cases(self) -> dict[str, list[Case]]:
        """The cases of each split.

        Raises:
            DataError: for a missing folder, unpaired files or an empty dataset.
        """
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        if self.resolved_layout() == "flat":
            cases = self._pair(self.root)
            return split_cases(cases, self.val_fraction, self.test_fraction, self.split_seed)
        found = {s: self._pair(self.root / s) for s in SPLITS if (self.root / s).is_dir()}
        for required in ("train", "val"):
            if required not in found:
                raise DataError(self.root / required, "split folder is missing (layout 'splits')")
        found.setdefault("test", [])
        return found

    def _pair(self, folder: Path) -> list[Case]:
        return pair_by_stem(folder / self.images_dir, folder / self.masks_dir, IMAGE_SUFFIXES, MASK_SUFFIXES)

    def predict_cases(self) -> list[Case]:
        if self.predict_dir is None:
            raise DataError(self.root, "no images to predict: set --data.predict_dir <folder>")
        files = list_files(Path(self.predict_dir), IMAGE_SUFFIXES)
        if not files:
            raise DataError(self.predict_dir, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [Case(stem, path) for stem, path in files.items()]

    # ---- validation ------------------------------------------------------------------------------
    def check(self, num_classes: int, in_channels: int, stage: str = "fit") -> list[DataError]:
        """Read every file of the splits ``stage`` uses and return all problems found."""
        try:
            splits = {"predict": self.predict_cases()} if stage == "predict" else self.cases()
        except DataError as err:
            return [err]
        problems: list[DataError] = []
        for split, cases in splits.items():
            for case in cases:
                try:
                    self._check_case(case, num_classes, in_channels)
                except DataError as err:
                    problems.append(err)
            if not cases and split in ("train", "val") and stage in ("fit", "validate"):
                problems.append(DataError(self.root, f"the {split} split is empty"))
            if not cases and split == "test" and stage == "test":
                problems.append(DataError(self.root, "the test split is empty"))
        return problems

    def _check_case(self, case: Case, num_classes: int, in_channels: int) -> None:
        image = read_image(case.image)
        if image.shape[-1] != in_channels:
            raise DataError(case.image, f"has {image.shape[-1]} channels, the model expects {in_channels}")
        if case.mask is None:
            return
        mask = read_mask(case.mask)
        if mask.shape != image.shape[:2]:
            raise DataError(case.mask, f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
        bad = np.unique(mask[(mask < 0) | (mask >= num_classes)])
        if bad.size:
            raise DataError(
                case.mask,
                f"labels {bad[:5].tolist()} are outside the {num_classes} classes 0..{num_classes - 1}",
            )

    def validate(self, num_classes: int, in_channels: int, stage: str = "fit") -> None:
        """Raise the first problem :meth:`check` finds, with a count of the others."""
        problems = self.check(num_classes, in_channels, stage)
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise DataError(first.path, first.problem + more)

    # ---- Lightning hooks -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.datasets["predict"] = self._dataset(self.predict_cases(), train=False)
            return
        splits = self.cases()
        for name, cases in splits.items():
            self.datasets[name] = self._dataset(cases, train=name == "train")

    def _dataset(self, cases: list[Case], train: bool) -> SegmentationDataset:
        return SegmentationDataset(
            cases,
            self.train_transform if train else self.eval_transform,
            self.normalization,
            self.mean,
            self.std,
            cache=self.cache,
        )

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if shuffle:  # the same global batches on 1 or N processes for one seed
            sampler = training_sampler(dataset, self.trainer)
        elif split in ("val", "test"):  # every case once across ranks (no padding with repeated cases)
            sampler = evaluation_sampler(dataset, self.trainer)
        else:
            sampler = None
        # Training resumes mid-epoch where its checkpoint was written; evaluation always runs whole.
        return (ResumableDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Each rank reads about len / world_size training cases: drop a ragged last batch only when
            # a rank has more than one batch.
            drop_last=shuffle and len(dataset) > batch_size * world_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", 1, shuffle=False)
