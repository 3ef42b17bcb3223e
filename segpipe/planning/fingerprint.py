"""The dataset fingerprint: what the planner decides from (nnU-Net's ``dataset_fingerprint.json``, MONAI
Auto3DSeg's data statistics), computed once and cached beside the preprocessing cache.

:func:`dataset_fingerprint` runs the dataset's checks, then reads every training case once
(:mod:`segpipe.planning.cases`) into a :class:`DatasetFingerprint`. The cache file
``<dataset>/.segpipe_cache/fingerprint-<key>.json`` is keyed on the names, sizes and modification times
of the files read, so a changed, added or removed file computes it again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.console import progress
from segpipe.data.sources.layouts import dataset_folder
from segpipe.io.atomic import write_text
from segpipe.planning.cases import class_names, modalities, read_cases, resolve, source_files
from segpipe.planning.statistics import StatisticsAccumulator

FINGERPRINT_VERSION = 2  # part of the cache key: bump when what the fingerprint holds changes
CACHE_FOLDER = ".segpipe_cache"  # the VolumeDataModule's default preprocessing cache folder


@dataclass(frozen=True)
class DatasetFingerprint:
    """Statistics of a dataset's training cases, JSON-ready (:meth:`to_dict` / :meth:`from_dict`).

    Per case (``case_names`` order): ``shapes`` (spatial size after cropping volumes to their non-zero
    box; (H, W) for 2D), ``spacings`` (mm; 1 for 2D pixels). Per channel: ``image_mean``/``image_std``
    over every voxel, ``foreground_intensity`` (``mean, std, median, p0_5, p99_5, min, max`` of up to
    10,000 foreground voxels per case), ``foreground_mean_spread`` (coefficient of variation of the cases'
    foreground means), ``modality`` (``dataset.json``'s channel names, None without one). Per class
    (``class_names``): ``class_fraction`` of all voxels, and the smallest structure: ``smallest_class_*``
    (smallest per-case volume) and ``smallest_component_*`` (smallest connected component), in voxels and
    mm^3 (None for background and absent classes). Per spatial axis: ``mirror_symmetry``, how much the
    mean label map overlaps its mirror image (1: symmetric; see
    :func:`segpipe.planning.statistics.mirror_symmetry`).
    """

    root: str
    layout: str
    spatial_dims: int
    case_names: list[str]
    shapes: list[list[int]]
    spacings: list[list[float]]
    in_channels: int
    class_names: list[str]
    modality: list[str] | None
    image_mean: list[float]
    image_std: list[float]
    foreground_intensity: list[dict[str, float]]
    foreground_mean_spread: list[float]
    class_fraction: list[float]
    smallest_class_voxels: list[int | None]
    smallest_class_mm3: list[float | None]
    smallest_component_voxels: list[int | None]
    smallest_component_mm3: list[float | None]
    mirror_symmetry: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def median_shape(self) -> list[float]:
        """Per-axis median of the case shapes."""
        return [float(s) for s in np.median(self.shapes, axis=0)]

    @property
    def median_spacing(self) -> list[float]:
        return [float(s) for s in np.median(self.spacings, axis=0)]

    @property
    def anisotropy(self) -> float:
        """Largest over smallest median spacing (1 for isotropic data)."""
        spacing = self.median_spacing
        return max(spacing) / min(spacing)

    @property
    def shared_intensity_scale(self) -> bool:
        """Whether the cases share one intensity scale: their foreground means vary by less than
        :data:`SHARED_SCALE_SPREAD` of their mean in every channel (slices of one volume do; photos
        with different exposures do not)."""
        return max(self.foreground_mean_spread) < SHARED_SCALE_SPREAD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetFingerprint:
        """Raises: KeyError for a missing field."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


# The demo's slices of one T1 volume spread by ~0.1; per-image z-scores suit sets that spread more.
SHARED_SCALE_SPREAD = 0.25


def cache_key(files: list[Path], layout: str) -> str:
    """Hash of the files' names, sizes and modification times (and the layout and format version)."""
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}:{layout}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def dataset_fingerprint(root: str | Path, layout: str = "auto", use_cache: bool = True) -> DatasetFingerprint:
    """The fingerprint of the dataset at ``root`` (2D image folders or any volume layout).

    Args:
        root: dataset folder, or a ``.csv``/``.json`` case list.
        layout: ``auto``, ``folder`` (2D images and masks), ``images_labels``, ``nnunet``, ``decathlon``, ``list``.
        use_cache: read and write ``<dataset>/.segpipe_cache/fingerprint-<key>.json``.

    Raises:
        DataError: the dataset's first problem (from its checks), naming the file.
    """
    path = Path(root)
    resolved = resolve(path, layout)
    files = source_files(path, resolved)
    cache = dataset_folder(path) / CACHE_FOLDER / f"fingerprint-{cache_key(files, resolved)}.json"
    if use_cache and cache.is_file():
        return DatasetFingerprint.from_dict(json.loads(cache.read_text()))
    fingerprint = compute_fingerprint(path, resolved)
    if use_cache:
        write_text(cache, json.dumps(fingerprint.to_dict(), indent=1))
    return fingerprint


def compute_fingerprint(root: Path, layout: str) -> DatasetFingerprint:
    """Read every training case of the (checked) dataset once; see :func:`dataset_fingerprint`.

    Raises:
        DataError: naming a file that cannot be read.
    """
    total, cases = read_cases(root, layout)
    accumulator = StatisticsAccumulator()
    names, shapes, spacings, channels = [], [], [], 1
    for case in progress(cases, total, "dataset fingerprint"):
        accumulator.add(case.image, case.label, case.spacing)
        names.append(case.name)
        shapes.append([int(s) for s in case.label.shape])
        spacings.append(list(case.spacing))
        channels = case.image.shape[0]
    statistics = accumulator.result()
    return DatasetFingerprint(
        root=str(root),
        layout=layout,
        spatial_dims=len(shapes[0]),
        case_names=names,
        shapes=shapes,
        spacings=spacings,
        in_channels=channels,
        class_names=class_names(root, accumulator.num_classes),
        modality=None if layout == "folder" else modalities(root),
        **statistics,  # type: ignore[arg-type]
    )
