"""Find image/mask pairs in folders and split them into train/val/test without leakage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segpipe.errors import DataError


@dataclass(frozen=True)
class Case:
    """One training example: an image file, its mask file (None when predicting) and a name."""

    name: str
    image: Path
    mask: Path | None = None


def list_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Map file stem -> path for the files in ``folder`` with one of ``suffixes``.

    Raises:
        DataError: if the folder is missing, or two files share a stem.
    """
    if not folder.is_dir():
        raise DataError(folder, "folder does not exist" if not folder.exists() else "is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(path, f"two files share the name {path.stem!r} ({found[path.stem].name})")
        found[path.stem] = path
    return found


def pair_by_stem(
    images_dir: Path, masks_dir: Path, image_suffixes: Sequence[str], mask_suffixes: Sequence[str]
) -> list[Case]:
    """Pair ``images_dir/<stem>.*`` with ``masks_dir/<stem>.*``.

    Raises:
        DataError: naming the first unpaired files, or when the folder holds no images.
    """
    images = list_files(images_dir, image_suffixes)
    masks = list_files(masks_dir, mask_suffixes)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        raise DataError(
            images[no_mask[0]],
            f"has no mask in {masks_dir} ({len(no_mask)} unpaired images: "
            f"{', '.join(no_mask[:5])}{'...' if len(no_mask) > 5 else ''})",
        )
    if no_image:
        raise DataError(
            masks[no_image[0]],
            f"has no image in {images_dir} ({len(no_image)} unpaired masks: "
            f"{', '.join(no_image[:5])}{'...' if len(no_image) > 5 else ''})",
        )
    if not images:
        raise DataError(images_dir, f"holds no images ({', '.join(image_suffixes)})")
    return [Case(stem, images[stem], masks[stem]) for stem in sorted(images)]


def split_cases(cases: Sequence[Case], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Case]]:
    """Shuffle with ``seed`` and cut into train/val/test; each case lands in exactly one split."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "and sum to less than 1"
        )
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = round(len(cases) * val_fraction)
    n_test = round(len(cases) * test_fraction)
    shuffled = [cases[i] for i in order]
    return {
        "val": sorted(shuffled[:n_val], key=lambda c: c.name),
        "test": sorted(shuffled[n_val : n_val + n_test], key=lambda c: c.name),
        "train": sorted(shuffled[n_val + n_test :], key=lambda c: c.name),
    }
