"""Dataset checks: read every case once and collect every problem, with the file it is in.

Shared by ``segpipe check-data`` (which prints them all) and the DataModules' ``check``/``validate``
(which ``segpipe fit|validate|test|predict`` run before anything is written, refusing with the first
problem and the count). Problems found per case: unreadable, empty, truncated or non-finite files;
4D channel files; channel files, image and label of different shape or geometry; labels outside the
classes; channel counts other than expected. Across the dataset: empty splits a stage needs, channel
counts that differ between cases (when no count is expected), and disagreement with ``dataset.json``.

Each file is decoded in full once: label values and NaN/Inf intensities can only be found in the
voxels, so reading headers only would not be enough.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segpipe.data.requirements import ModelRequirements
from segpipe.data.sources.dataset_json import DATASET_JSON, DatasetJson
from segpipe.data.sources.layouts import VolumeCase
from segpipe.data.sources.pairing import Case
from segpipe.data.sources.volume_cases import geometry_problem, same_geometry
from segpipe.errors import DataError
from segpipe.io.images import read_image, read_mask
from segpipe.io.volumes import VolumeMeta, read_label, read_volume

CaseT = TypeVar("CaseT")


@dataclass(frozen=True)
class Expected:
    """What every case must match: ``num_classes`` label values and ``in_channels`` channels (None:
    not checked), and who requires it (``the model`` or ``dataset.json``), for the messages."""

    num_classes: int | None = None
    in_channels: int | None = None
    classes_from: str = "the model"
    channels_from: str = "the model"


@dataclass(frozen=True)
class CaseSummary:
    """What one readable case holds: spatial ``shape``, ``channels``, label values, voxel ``spacing`` (mm)."""

    name: str
    split: str
    shape: tuple[int, ...]
    channels: int
    labels: tuple[int, ...] = ()
    spacing: tuple[float, ...] | None = None


@dataclass
class DataReport:
    """Every problem of a dataset, and a summary of the cases that could be read."""

    problems: list[DataError] = field(default_factory=list)
    cases: list[CaseSummary] = field(default_factory=list)
    class_names: tuple[str, ...] | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)  # cases per split, readable or not

    @property
    def ok(self) -> bool:
        return not self.problems

    def labels_found(self) -> list[int]:
        return sorted({v for c in self.cases for v in c.labels})


def expectations(
    num_classes: int | None, in_channels: int | None, declared: DatasetJson | None
) -> tuple[Expected, list[DataError]]:
    """What the cases must match, from the model (when given) or else ``dataset.json``, and one problem
    per count on which the two disagree."""
    problems = []
    if declared is not None and num_classes is not None and declared.num_classes != num_classes:
        problems.append(
            DataError(declared.path, f"declares {declared.num_classes} labels, the model has num_classes={num_classes}")
        )
    if declared is not None and in_channels is not None and declared.in_channels != in_channels:
        problems.append(
            DataError(
                declared.path, f"declares {declared.in_channels} channels, the model has in_channels={in_channels}"
            )
        )
    classes_from = "the model" if num_classes is not None or declared is None else DATASET_JSON
    channels_from = "the model" if in_channels is not None or declared is None else DATASET_JSON
    expected = Expected(
        num_classes if num_classes is not None else declared.num_classes if declared else None,
        in_channels if in_channels is not None else declared.in_channels if declared else None,
        classes_from,
        channels_from,
    )
    return expected, problems


# ---- one case ----------------------------------------------------------------------------------------
def label_values(label: np.ndarray) -> np.ndarray:
    """The distinct values of an integer label array, sorted (a bincount, O(n), for compact ranges)."""
    if label.size == 0:
        return np.zeros(0, np.int64)
    lo, hi = int(label.min()), int(label.max())
    if hi - lo < 1 << 16:
        return np.flatnonzero(np.bincount((label - lo).ravel())) + lo
    return np.unique(label)


def _label_problem(values: np.ndarray, expected: Expected) -> str | None:
    k = expected.num_classes
    if k is None:
        return None
    bad = values[(values < 0) | (values >= k)]
    if not bad.size:
        return None
    where = "" if expected.classes_from == "the model" else f" declared in {expected.classes_from}"
    return f"labels {bad[:5].tolist()} are outside the {k} classes 0..{k - 1}{where}"


def _channel_problem(channels: int, expected: Expected, shape: tuple[int, ...] | None = None) -> str | None:
    want = expected.in_channels
    if want is None or channels == want:
        return None
    verb = "expects" if expected.channels_from == "the model" else "declares"
    four_d = f" (a 4D file of shape {shape})" if shape is not None else ""
    return f"has {channels} channels{four_d}, {expected.channels_from} {verb} {want}"


def check_volume_case(case: VolumeCase, split: str, expected: Expected) -> tuple[CaseSummary | None, list[DataError]]:
    """Read one volume case; its summary (None when its image cannot be read) and its problems."""
    problems: list[DataError] = []
    channels: list[tuple[Path, np.ndarray, VolumeMeta]] = []
    for path in case.images:
        try:
            array, meta = read_volume(path)
        except DataError as err:
            problems.append(err)
            continue
        if len(case.images) > 1 and array.shape[0] > 1:
            problems.append(DataError(path, f"is 4D (shape {array.shape}); each channel file must hold one volume"))
            continue
        if channels and array.shape[1:] != channels[0][1].shape[1:]:
            first = channels[0]
            problems.append(
                DataError(path, f"shape {array.shape[1:]} differs from {first[0].name} {first[1].shape[1:]}")
            )
            continue
        if channels and not same_geometry(meta, channels[0][2]):
            problems.append(DataError(path, geometry_problem("channel", meta, channels[0][2], channels[0][0].name)))
            continue
        channels.append((path, array, meta))
    label = label_meta = None
    if case.label is not None:
        try:
            label, label_meta = read_label(case.label)
        except DataError as err:
            problems.append(err)
    if len(channels) < len(case.images):  # an unreadable or mismatched channel: nothing more to compare
        return None, problems
    path, image, meta = channels[0]
    count = sum(a.shape[0] for _, a, _ in channels)
    four_d = image.shape if len(case.images) == 1 and count > 1 else None
    if problem := _channel_problem(count, expected, four_d):
        problems.append(DataError(path, problem))
    values = np.zeros(0, np.int64)
    if case.label is not None and label is not None and label_meta is not None:
        if label.shape != image.shape[1:]:
            shapes = f"label shape {label.shape} differs from image shape {image.shape[1:]} ({path.name})"
            problems.append(DataError(case.label, shapes))
        elif not same_geometry(label_meta, meta):
            problems.append(DataError(case.label, geometry_problem("label", label_meta, meta, f"image {path.name}")))
        values = label_values(label)
        if problem := _label_problem(values, expected):
            problems.append(DataError(case.label, problem))
    summary = CaseSummary(case.name, split, image.shape[1:], count, tuple(values.tolist()), meta.spacing)
    return summary, problems


def check_image_case(case: Case, split: str, expected: Expected) -> tuple[CaseSummary | None, list[DataError]]:
    """Read one 2D case (image and mask); its summary (None when the image cannot be read) and problems."""
    problems: list[DataError] = []
    try:
        image = read_image(case.image)
    except DataError as err:
        image = None
        problems.append(err)
    mask = None
    if case.mask is not None:
        try:
            mask = read_mask(case.mask)
        except DataError as err:
            problems.append(err)
    if image is None:
        return None, problems
    if problem := _channel_problem(image.shape[-1], expected):
        problems.append(DataError(case.image, problem))
    values = np.zeros(0, np.int64)
    if case.mask is not None and mask is not None:
        if mask.shape != image.shape[:2]:
            problems.append(DataError(case.mask, f"mask shape {mask.shape} differs from image shape {image.shape[:2]}"))
        values = label_values(mask)
        if problem := _label_problem(values, expected):
            problems.append(DataError(case.mask, problem))
    return CaseSummary(case.name, split, image.shape[:2], image.shape[-1], tuple(values.tolist())), problems


# ---- the dataset -------------------------------------------------------------------------------------
def _first_image(case: VolumeCase | Case) -> Path:
    return case.images[0] if isinstance(case, VolumeCase) else case.image


def check_splits(
    root: Path,
    splits: Mapping[str, Sequence[CaseT]],
    check_case: Callable[[CaseT, str, Expected], tuple[CaseSummary | None, list[DataError]]],
    expected: Expected,
    stage: str,
    problems: Sequence[DataError] = (),
    class_names: tuple[str, ...] | None = None,
) -> DataReport:
    """Check every case of ``splits`` with ``check_case`` and the dataset as a whole.

    ``problems`` are those already found (discovery, ``dataset.json``); they come first in the report.
    """
    report = DataReport(list(problems), class_names=class_names)
    first_images: dict[str, Path] = {}
    for split, cases in splits.items():
        report.split_sizes[split] = len(cases)
        for case in cases:
            summary, case_problems = check_case(case, split, expected)
            report.problems += case_problems
            if summary is not None:
                report.cases.append(summary)
                first_images[summary.name] = _first_image(case)
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        if not cases and split in needed:
            report.problems.append(DataError(root, f"the {split} split is empty"))
    if expected.in_channels is None and report.cases:
        usual, _ = Counter(c.channels for c in report.cases).most_common(1)[0]
        report.problems += [
            DataError(first_images[c.name], f"has {c.channels} channels, most cases have {usual}")
            for c in report.cases
            if c.channels != usual
        ]
    return report


def first_problem(problems: Sequence[DataError]) -> DataError:
    """The first problem, with the count of the others, as the one line ``segpipe fit`` refuses with.

    Raises:
        ValueError: for an empty list.
    """
    if not problems:
        raise ValueError("no problems")
    first = problems[0]
    if len(problems) == 1:
        return first
    more = f" (and {len(problems) - 1} more problems; `segpipe check-data` lists them all)"
    return DataError(first.path, first.problem + more)


class DataChecks(ABC):
    """Mixin for DataModules: :meth:`check` and :meth:`validate` on top of their :meth:`report`."""

    @abstractmethod
    def report(self, num_classes: int | None = None, in_channels: int | None = None, stage: str = "fit") -> DataReport:
        """Read the files ``stage`` uses and report every problem (see the DataModule)."""

    def check(self, num_classes: int, in_channels: int, stage: str = "fit") -> list[DataError]:
        """Every problem :meth:`report` finds for a model of ``num_classes`` and ``in_channels``."""
        return self.report(num_classes, in_channels, stage).problems

    @abstractmethod
    def cases(self) -> dict[str, list[Any]]:
        """The cases of each split (``train``, ``val``, ``test``)."""

    def has_test_cases(self) -> bool:
        """Whether the test split has cases (``segpipe fit`` then tests the best checkpoint)."""
        return bool(self.cases().get("test"))

    def check_for(self, model: ModelRequirements, stage: str) -> None:
        """Build what ``stage`` reads (the LightningDataModule's :meth:`prepare_data`), then :meth:`validate` it
        for ``model``."""
        self.prepare_data()  # type: ignore[attr-defined]
        self.validate(model.num_classes, model.in_channels, stage)

    def validate(self, num_classes: int, in_channels: int, stage: str = "fit") -> None:
        """Raise the first problem :meth:`check` finds, with a count of the others.

        Raises:
            DataError: the first problem, naming its file.
        """
        problems = self.check(num_classes, in_channels, stage)
        if problems:
            raise first_problem(problems)
