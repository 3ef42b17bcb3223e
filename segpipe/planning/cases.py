"""The training cases of a dataset as the fingerprint reads them: ``(name, image, label, spacing, files)``,
for every layout segpipe reads, after the dataset's checks (a bad dataset raises the first problem).

- 2D image/mask folders (``layout: folder``, read as :class:`~segpipe.data.FolderDataModule` reads them:
  the training split, 8-bit values kept 0-255), image (C, H, W), spacing (1, 1);
- volumes (``images_labels``, ``nnunet``, ``decathlon``, ``list``: :mod:`segpipe.data.sources.layouts`),
  every labelled case as nnU-Net does, image (C, X, Y, Z) cropped to its non-zero box and reoriented to
  RAS as :class:`~segpipe.data.VolumeDataModule` does by default; spacing in mm along those axes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segpipe.data.checks import DataReport
from segpipe.data.sources.dataset_json import DATASET_JSON
from segpipe.data.sources.layouts import dataset_folder, discover_cases, read_declaration, resolve_layout
from segpipe.data.sources.pairing import Case
from segpipe.data.sources.volume_cases import load_case
from segpipe.errors import DataError
from segpipe.io.images import IMAGE_SUFFIXES
from segpipe.preprocessing.cache import case_sources
from segpipe.preprocessing.geometry import oriented_axes

ORIENTATION = "RAS"  # VolumeDataModule's default orientation


@dataclass(frozen=True)
class CaseData:
    """One training case: ``image`` (C, *spatial) float, ``label`` (*spatial) int64, ``spacing`` per axis."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]


def is_image_folder(root: Path) -> bool:
    """Whether ``root`` holds 2D images (``images/`` or ``train/images/`` of PNG/TIFF/JPEG files)."""
    for folder in (root / "images", root / "train" / "images"):
        if folder.is_dir():
            return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
    return False


def resolve(root: Path, layout: str) -> str:
    """``folder`` for 2D image folders, else the volume layout (see :func:`resolve_layout`).

    Raises:
        DataError: when ``root`` is missing or holds no known layout.
    """
    if layout == "folder" or (layout == "auto" and root.is_dir() and is_image_folder(root)):
        return "folder"
    return resolve_layout(root, layout)  # type: ignore[arg-type]


def _raise_first(report: DataReport) -> None:
    if not report.ok:
        raise report.problems[0]


def _image_cases(root: Path) -> list[Case]:
    from segpipe.data.modules.folder import FolderDataModule

    module = FolderDataModule(root=str(root), num_workers=0)
    _raise_first(module.report())
    return module.cases()["train"]


def source_files(root: Path, layout: str) -> list[Path]:
    """Every file the fingerprint reads (its cache key), ``dataset.json`` included, after the dataset's checks.

    Raises:
        DataError: the dataset's first problem.
    """
    declaration = dataset_folder(root) / DATASET_JSON
    declared = [declaration] if declaration.is_file() else []
    if layout == "folder":
        return declared + [p for case in _image_cases(root) for p in (case.image, case.mask) if p is not None]
    from segpipe.data.modules.volumes import VolumeDataModule

    _raise_first(VolumeDataModule(root=str(root), layout=layout, num_workers=0).report())
    cases, problems = discover_cases(root, layout)  # type: ignore[arg-type]
    if problems:
        raise problems[0]
    return declared + [p for case in cases for p in case_sources(case)]


def read_cases(root: Path, layout: str) -> tuple[int, Iterator[CaseData]]:
    """How many training cases there are, and the cases, read one at a time.

    Raises:
        DataError: naming the file, for an unreadable case.
    """
    if layout == "folder":
        cases = _image_cases(root)
        return len(cases), (_read_image_case(case) for case in cases)
    volumes, _ = discover_cases(root, layout)  # type: ignore[arg-type]
    return len(volumes), (_read_volume_case(case) for case in volumes)


def _read_image_case(case: Case) -> CaseData:
    from segpipe.data.datasets import as_augmentable
    from segpipe.io.images import read_image, read_mask

    image = as_augmentable(read_image(case.image))
    if case.mask is None:
        raise DataError(case.image, "has no mask: the fingerprint reads labelled training cases")
    image = image[..., None] if image.ndim == 2 else image
    return CaseData(case.name, np.moveaxis(image, -1, 0), read_mask(case.mask).astype(np.int64), (1.0, 1.0))


def _read_volume_case(case) -> CaseData:
    image, label, meta = load_case(case)
    if label is None:
        raise DataError(case.images[0], "has no label: the fingerprint reads labelled training cases")
    nonzero = np.argwhere(np.any(image != 0, axis=0))
    if nonzero.size:  # crop to the non-zero box, as preprocessing does (crop_nonzero)
        low, high = nonzero.min(axis=0), nonzero.max(axis=0) + 1
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        image, label = image[(slice(None), *box)], label[box]
    order = np.argsort(oriented_axes(meta.affine, ORIENTATION))  # voxel axis of each RAS axis
    spacing = tuple(float(meta.spacing[axis]) for axis in order)
    return CaseData(case.name, np.transpose(image, (0, *(order + 1))), np.transpose(label, order), spacing)


def modalities(root: Path) -> list[str] | None:
    """The channel names ``dataset.json`` declares (``CT``, ``T1``, ...), or None without one.

    Raises:
        DataError: for an invalid ``dataset.json``.
    """
    declared = read_declaration(dataset_folder(root))
    return list(declared.channel_names) if declared is not None else None


def class_names(root: Path, num_classes: int) -> list[str]:
    """The class names of ``dataset.json`` when there is one (in 2D folders too: the demo writes one), else
    ``background``, ``class1``, ...

    Raises:
        DataError: for a ``dataset.json`` whose labels are not ``num_classes`` classes.
    """
    declared = read_declaration(dataset_folder(root))
    if declared is not None:
        if declared.num_classes < num_classes:
            found = f"the masks hold labels up to {num_classes - 1}"
            raise DataError(declared.path, f"declares {declared.num_classes} labels, but {found}")
        return list(declared.class_names)
    return ["background", *(f"class{k}" for k in range(1, num_classes))]
