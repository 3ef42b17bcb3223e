"""Volume dataset layouts: find volume files, group nnU-Net channel files, pair images with labels.

Layouts read (``layout: auto`` picks by what exists)::

    root/imagesTr/<case>_0000.nii.gz  root/labelsTr/<case>.nii.gz   -> "nnunet": one file per channel
         imagesTr/<case>_0001.nii.gz   (imagesTs/<case>_0000.nii.gz: inputs for predict)
    root/images/<case>.nii.gz         root/labels/<case>.nii.gz     -> "images_labels" (or masks/)

Files are paired by case name (the file name without ``.nii.gz``, ``.nrrd``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segpipe.data.io3d import VOLUME_SUFFIXES, volume_name
from segpipe.errors import DataError

Layout = Literal["auto", "images_labels", "nnunet"]
ResolvedLayout = Literal["images_labels", "nnunet"]
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class VolumeCase:
    """One case: its image files, one per channel in channel order, and its label file (None to predict)."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None


# ---- discovery -------------------------------------------------------------------------------------
def list_volumes(folder: Path) -> dict[str, Path]:
    """Map case name -> path for the volume files in ``folder`` (hidden files skipped).

    Raises:
        DataError: if the folder is missing, or two files share a name (``a.nii`` and ``a.nii.gz``).
    """
    if not folder.is_dir():
        raise DataError(folder, "folder does not exist" if not folder.exists() else "is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.lower().endswith(VOLUME_SUFFIXES):
            continue
        name = volume_name(path)
        if name in found:
            raise DataError(path, f"two files share the case name {name!r} ({found[name].name})")
        found[name] = path
    return found


def group_channels(files: dict[str, Path]) -> tuple[dict[str, tuple[Path, ...]], list[DataError]]:
    """Group nnU-Net image files ``<case>_0000``, ``<case>_0001``, ... into multi-channel cases.

    Returns the cases (channel files in channel order) and one problem per file without a channel
    suffix or case with a gap in its channel numbers.
    """
    channels: dict[str, dict[int, Path]] = {}
    problems: list[DataError] = []
    for name, path in files.items():
        match = _CHANNEL_SUFFIX.match(name)
        if match is None:
            problems.append(DataError(path, "nnU-Net image names end in a 4-digit channel, e.g. case_0000"))
            continue
        channels.setdefault(match["case"], {})[int(match["channel"])] = path
    cases: dict[str, tuple[Path, ...]] = {}
    for case, by_index in sorted(channels.items()):
        if sorted(by_index) != list(range(len(by_index))):
            first = by_index[min(by_index)]
            problems.append(
                DataError(first, f"case {case!r} has channels {sorted(by_index)}, expected 0..{len(by_index) - 1}")
            )
            continue
        cases[case] = tuple(by_index[i] for i in range(len(by_index)))
    return cases, problems


def pair_cases(
    images: dict[str, tuple[Path, ...]], labels: dict[str, Path], images_dir: Path, labels_dir: Path
) -> tuple[list[VolumeCase], list[DataError]]:
    """Pair image cases with label files by name; returns the pairs and one problem per unpaired file."""
    problems = [DataError(images[n][0], f"has no label in {labels_dir}") for n in sorted(set(images) - set(labels))]
    problems += [DataError(labels[n], f"has no image in {images_dir}") for n in sorted(set(labels) - set(images))]
    cases = [VolumeCase(n, images[n], labels[n]) for n in sorted(set(images) & set(labels))]
    return cases, problems


def resolve_layout(root: Path, layout: Layout) -> ResolvedLayout:
    """The layout in use; ``auto`` picks ``nnunet`` when ``imagesTr/`` exists, else ``images_labels``.

    Raises:
        DataError: when ``root`` is missing or holds neither layout.
    """
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    if layout != "auto":
        return layout
    if (root / "imagesTr").is_dir():
        return "nnunet"
    if (root / "images").is_dir():
        return "images_labels"
    raise DataError(root, "holds neither imagesTr/ + labelsTr/ (nnU-Net) nor images/ + labels/")


def discover_cases(root: Path, layout: Layout) -> tuple[list[VolumeCase], list[DataError]]:
    """The paired cases of the dataset at ``root`` and one problem per file that could not be paired.

    Raises:
        DataError: for a missing dataset or image folder, or one that holds no volumes.
    """
    if resolve_layout(root, layout) == "nnunet":
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        images, problems = group_channels(list_volumes(images_dir))
    else:
        images_dir = root / "images"
        labels_dir = root / "labels"
        if not labels_dir.is_dir() and (root / "masks").is_dir():
            labels_dir = root / "masks"
        images = {name: (path,) for name, path in list_volumes(images_dir).items()}
        problems = []
    if not images and not problems:
        raise DataError(images_dir, f"holds no volumes ({', '.join(VOLUME_SUFFIXES)})")
    cases, unpaired = pair_cases(images, list_volumes(labels_dir), images_dir, labels_dir)
    return cases, problems + unpaired


def predict_cases(root: Path, layout: Layout, predict_dir: str | Path | None) -> list[VolumeCase]:
    """Cases to predict: ``predict_dir``, or ``imagesTs/`` of an nnU-Net dataset.

    Raises:
        DataError: when there is no folder to predict or it holds no volumes.
    """
    nnunet = layout == "nnunet" or (layout == "auto" and (root / "imagesTr").is_dir())
    if predict_dir is not None:
        folder = Path(predict_dir)
    elif nnunet and (root / "imagesTs").is_dir():
        folder = root / "imagesTs"
    else:
        raise DataError(root, "no volumes to predict: set --data.predict_dir <folder>")
    files = list_volumes(folder)
    if not files:
        raise DataError(folder, f"holds no volumes ({', '.join(VOLUME_SUFFIXES)})")
    if not nnunet:
        return [VolumeCase(name, (path,)) for name, path in files.items()]
    grouped, problems = group_channels(files)
    if problems:
        raise problems[0]
    return [VolumeCase(name, paths) for name, paths in grouped.items()]
