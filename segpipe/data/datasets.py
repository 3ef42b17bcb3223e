"""Torch datasets over 2D image/mask files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segpipe.data.sources.pairing import Case
from segpipe.errors import DataError
from segpipe.io.images import read_image, read_mask
from segpipe.preprocessing.normalize import Normalization, apply_normalization, normalization_stats, pixel_statistics


class SegmentationDataset(Dataset):
    """Reads ``cases`` and yields ``{"image": (C, H, W) float32, "mask": (H, W) int64, "name": str}``.

    Normalisation statistics are taken from the whole image as read; augmentation then runs on the
    stored pixel type (uint8 stays uint8, other types become float32 scaled to [0, 1] by their range),
    and the statistics are applied last, so intensity transforms see familiar values and a random
    crop is normalised exactly as the same pixels are at validation time.
    Masks are omitted for cases without one (prediction).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        transform: A.Compose | None = None,
        normalization: Normalization = "zscore",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cache: bool = False,
    ) -> None:
        self.cases = list(cases)
        self.transform = transform
        self.normalization = normalization
        self.mean = mean
        self.std = std
        self.cache = cache
        self._cached: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._seeded_pid: int | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if index in self._cached:
            return self._cached[index]
        case = self.cases[index]
        image = as_augmentable(read_image(case.image))
        mask = read_mask(case.mask) if case.mask is not None else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise_shape_mismatch(case, image.shape[:2], mask.shape)
        if self.cache:
            self._cached[index] = (image, mask)
        return image, mask

    def _seed_transform(self, index: int) -> None:
        # albumentations draws from its own generator, not torch's: seed it once per process from the
        # torch seed that Lightning's seed_everything(workers=True) gives each worker, and per sample when
        # the index carries a seed (TrainingSampler: the same augmentation on any number of workers or
        # processes, and after a resume).
        if self.transform is None:
            return
        if self._seeded_pid != os.getpid():
            self.transform.set_random_seed(torch.initial_seed() % 2**32)
            cv2.setNumThreads(0)
            self._seeded_pid = os.getpid()
        seed = getattr(index, "seed", None)
        if seed is not None:
            self.transform.set_random_seed(seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._seed_transform(index)
        image, mask = self._load(index)
        shift, scale = normalization_stats(image, self.normalization, self.mean, self.std)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask) if mask is not None else self.transform(image=image)
            image, mask = out["image"], out.get("mask")
        if image.ndim == 2:
            image = image[..., None]
        image = apply_normalization(image, shift, scale)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "name": self.cases[index].name,
        }
        if mask is not None:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
        return sample


def as_augmentable(image: np.ndarray) -> np.ndarray:
    """Keep uint8 as is; scale other integer types to float32 in [0, 1]; cast floats to float32."""
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return ((image.astype(np.float32) - info.min) / (info.max - info.min)).astype(np.float32)
    return image.astype(np.float32)


def raise_shape_mismatch(case: Case, image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> None:
    raise DataError(
        case.mask or case.image,
        f"mask shape {tuple(mask_shape)} differs from image shape {tuple(image_shape)} ({case.image.name})",
    )


def training_statistics(cases: Sequence[Case], root: Path) -> dict[str, list[float]]:
    """``{"mean": [...], "std": [...]}`` per channel over every pixel of the ``cases``' images as the dataset
    reads them (:func:`as_augmentable`: 8-bit values stay 0-255), for ``normalization: dataset``.

    Raises:
        DataError: naming an unreadable image, or the first case when there is none or channel counts differ.
    """
    if not cases:
        raise DataError(root, "normalization 'dataset' needs training images, the train split is empty")
    try:
        mean, std = pixel_statistics(as_augmentable(read_image(case.image)) for case in cases)
    except ValueError as err:
        raise DataError(cases[0].image, f"{err} (normalization 'dataset')") from None
    return {"mean": mean, "std": std}
