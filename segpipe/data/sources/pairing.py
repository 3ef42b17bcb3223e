"""Find image/mask pairs in folders (splitting them: :mod:`segpipe.data.splits`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def pair_files(
    images_dir: Path, masks_dir: Path, image_suffixes: Sequence[str], mask_suffixes: Sequence[str]
) -> tuple[list[Case], list[DataError]]:
    """Pair ``images_dir/<stem>.*`` with ``masks_dir/<stem>.*``; returns the pairs and one problem per
    unpaired file (or one for an image folder without images).

    Raises:
        DataError: if a folder is missing or two of its files share a stem.
    """
    images = list_files(images_dir, image_suffixes)
    masks = list_files(masks_dir, mask_suffixes)
    problems = [DataError(images[s], f"has no mask in {masks_dir}") for s in sorted(set(images) - set(masks))]
    problems += [DataError(masks[s], f"has no image in {images_dir}") for s in sorted(set(masks) - set(images))]
    if not images:
        problems.insert(0, DataError(images_dir, f"holds no images ({', '.join(image_suffixes)})"))
    return [Case(stem, images[stem], masks[stem]) for stem in sorted(set(images) & set(masks))], problems


def pair_by_stem(
    images_dir: Path, masks_dir: Path, image_suffixes: Sequence[str], mask_suffixes: Sequence[str]
) -> list[Case]:
    """Pair ``images_dir/<stem>.*`` with ``masks_dir/<stem>.*`` (see :func:`pair_files`).

    Raises:
        DataError: naming the first unpaired file (with the count), or when the folder holds no images.
    """
    cases, problems = pair_files(images_dir, masks_dir, image_suffixes, mask_suffixes)
    if problems:
        first = problems[0]
        more = f" ({len(problems)} unpaired files)" if len(problems) > 1 else ""
        raise DataError(first.path, first.problem + more)
    return cases
