"""Volume dataset layouts: find volume files, group nnU-Net channel files, pair images with labels.

Layouts read (``layout: auto`` picks by what exists)::

    root/imagesTr/<case>_0000.nii.gz  root/labelsTr/<case>.nii.gz   -> "nnunet": one file per channel
         imagesTr/<case>_0001.nii.gz   (imagesTs/<case>_0000.nii.gz: inputs for predict)
    root/dataset.json with "training": [{"image", "label"}]       -> "decathlon": the cases it lists
    root/images/<case>.nii.gz         root/labels/<case>.nii.gz     -> "images_labels" (or masks/)
    root = cases.csv / cases.json, or list_file: cases.csv in root  -> "list" (see segpipe.data.sources.case_lists)

Files are paired by case name (the file name without ``.nii.gz``, ``.nrrd``, ...). A folder of DICOM
slices counts as one volume file named after the folder. A ``dataset.json`` in the dataset folder
(nnU-Net v2 or Decathlon, :mod:`segpipe.data.sources.dataset_json`) declares classes and channels; where it
disagrees with the files found (``numTraining``, ``file_ending``) that is a problem of the dataset.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segpipe.data.sources.case_lists import is_case_list, read_case_list
from segpipe.data.sources.dataset_json import DATASET_JSON, DatasetJson, json_flavour, read_dataset_json
from segpipe.errors import DataError
from segpipe.io.volumes import VOLUME_SUFFIXES, is_dicom_series, volume_name, volume_suffix

Layout = Literal["auto", "images_labels", "nnunet", "decathlon", "list"]
ResolvedLayout = Literal["images_labels", "nnunet", "decathlon", "list"]
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class VolumeCase:
    """One case: its image files, one per channel in channel order, and its label file (None to predict)."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None


# ---- discovery -------------------------------------------------------------------------------------
def dataset_folder(root: Path) -> Path:
    """The folder of the dataset: ``root``, or the folder of a case-list file given as ``root``."""
    return root.parent if is_case_list(root) else root


def scan_volumes(folder: Path) -> tuple[dict[str, Path], list[DataError]]:
    """Map case name -> path for the volumes in ``folder``: files with a volume suffix (hidden ones
    skipped) and folders of DICOM slices; plus one problem per file whose case name is taken already
    (``a.nii`` and ``a.nii.gz``).

    Raises:
        DataError: if the folder is missing or is a file.
    """
    if not folder.is_dir():
        raise DataError(folder, "folder does not exist" if not folder.exists() else "is not a folder")
    found: dict[str, Path] = {}
    problems: list[DataError] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if volume_suffix(path) is None and not is_dicom_series(path):
            continue
        name = volume_name(path)
        if name in found:
            problems.append(DataError(path, f"two files share the case name {name!r} ({found[name].name})"))
            continue
        found[name] = path
    return found, problems


def list_volumes(folder: Path) -> dict[str, Path]:
    """:func:`scan_volumes` that raises its first problem.

    Raises:
        DataError: if the folder is missing, or two files share a name.
    """
    found, problems = scan_volumes(folder)
    if problems:
        raise problems[0]
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


def _lists_cases(path: Path) -> bool:
    """Whether ``path`` is a Decathlon-style dataset.json (one with a ``training`` list)."""
    try:
        return json_flavour(json.loads(path.read_text(encoding="utf-8"))) == "decathlon"
    except (OSError, ValueError):
        return False


def resolve_layout(root: Path, layout: Layout, list_file: str | None = None) -> ResolvedLayout:
    """The layout in use. ``auto`` picks ``list`` for a ``.csv``/``.json`` root or with ``list_file``;
    with ``imagesTr/``, ``decathlon`` when ``dataset.json`` lists the cases, else ``nnunet``; else
    ``images_labels`` when ``images/`` exists.

    Raises:
        DataError: when ``root`` is missing or holds no known layout.
    """
    if layout == "list" or (layout == "auto" and (is_case_list(root) or list_file)):
        return "list"
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist" if not root.exists() else "is not a folder")
    if layout != "auto":
        return layout
    if (root / "imagesTr").is_dir():
        return "decathlon" if _lists_cases(root / DATASET_JSON) else "nnunet"
    if (root / "images").is_dir():
        return "images_labels"
    raise DataError(
        root, "holds neither imagesTr/ + labelsTr/ (nnU-Net, Decathlon) nor images/ + labels/ (or a case list)"
    )


def case_list_path(root: Path, layout: ResolvedLayout, list_file: str | None = None) -> Path:
    """The file that lists the cases of a ``list`` or ``decathlon`` dataset.

    Raises:
        DataError: for layout ``list`` without a list file.
    """
    if is_case_list(root):
        return root
    if layout == "decathlon":
        return root / DATASET_JSON
    if list_file is None:
        raise DataError(root, "layout 'list' needs a .csv/.json file as root, or list_file: <file in root>")
    return root / list_file


def read_declaration(root: Path) -> DatasetJson | None:
    """The ``dataset.json`` of the dataset folder, or None when there is none.

    Raises:
        DataError: naming the file when it is invalid (see :func:`segpipe.data.sources.dataset_json.read_dataset_json`).
    """
    path = dataset_folder(root) / DATASET_JSON
    return read_dataset_json(path) if path.exists() or path.is_symlink() else None


def _declaration_problems(
    declared: DatasetJson, images: dict[str, tuple[Path, ...]], labels: dict[str, Path], listed: int | None
) -> list[DataError]:
    """Where the data disagree with ``dataset.json``: the number of training cases, file endings."""
    found = len(images) if listed is None else listed
    what = "images found" if listed is None else "training entries"
    problems = []
    if declared.num_training != found:
        problems.append(DataError(declared.path, f"numTraining is {declared.num_training}, but {found} {what}"))
    ending = declared.file_ending
    if ending is not None:
        files = [p for paths in images.values() for p in paths] + list(labels.values())
        problems += [
            DataError(p, f"does not end in {ending}, the file_ending of {DATASET_JSON}")
            for p in files
            if not p.name.lower().endswith(ending.lower())
        ]
    return problems


def _listed_cases(
    root: Path, layout: ResolvedLayout, list_file: str | None, labelled: bool
) -> tuple[list[VolumeCase], list[DataError], Path]:
    path = case_list_path(root, layout, list_file)
    entries, problems = read_case_list(path)
    cases = [VolumeCase(*entry) for entry in entries if (entry[2] is not None) == labelled]
    return cases, problems, path


def discover_cases(
    root: Path, layout: Layout, list_file: str | None = None
) -> tuple[list[VolumeCase], list[DataError]]:
    """The paired cases of the dataset at ``root`` and one problem per file that could not be paired,
    per duplicate case name, and per disagreement with ``dataset.json`` (which is read when present).

    Raises:
        DataError: for a missing dataset, image folder or case list, one that holds no volumes, or an
            invalid ``dataset.json`` in the ``decathlon`` layout (which needs it to find the cases).
    """
    resolved = resolve_layout(root, layout, list_file)
    problems: list[DataError] = []
    try:
        declared = read_declaration(root)
    except DataError as err:
        if resolved == "decathlon":
            raise
        declared, problems = None, [err]
    if resolved in ("list", "decathlon"):
        cases, listed, path = _listed_cases(root, resolved, list_file, labelled=True)
        problems += listed
        if not cases:
            raise DataError(path, "lists no case with a label")
        if declared is not None and declared.training is not None:
            problems += _declaration_problems(declared, {}, {}, listed=len(declared.training))
        return cases, problems
    if resolved == "nnunet":
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        files, problems_found = scan_volumes(images_dir)
        images, bad_names = group_channels(files)
        problems += problems_found + bad_names
    else:
        images_dir = root / "images"
        labels_dir = root / "labels"
        if not labels_dir.is_dir() and (root / "masks").is_dir():
            labels_dir = root / "masks"
        files, problems_found = scan_volumes(images_dir)
        images = {name: (path,) for name, path in files.items()}
        problems += problems_found
    if not images and not problems:
        raise DataError(images_dir, f"holds no volumes ({', '.join(VOLUME_SUFFIXES)} or DICOM folders)")
    labels, label_problems = scan_volumes(labels_dir)
    cases, unpaired = pair_cases(images, labels, images_dir, labels_dir)
    if declared is not None:
        problems += _declaration_problems(declared, images, labels, listed=None)
    return cases, problems + label_problems + unpaired


def predict_cases(
    root: Path, layout: Layout, predict_dir: str | Path | None, list_file: str | None = None
) -> list[VolumeCase]:
    """Cases to predict: ``predict_dir``, else ``imagesTs/`` of an nnU-Net dataset, or the entries
    without a label of a case list (a Decathlon dataset.json's ``test`` list).

    Raises:
        DataError: when there is no folder to predict or it holds no volumes.
    """
    if predict_dir is None and (resolved := resolve_layout(root, layout, list_file)) in ("list", "decathlon"):
        cases, problems, path = _listed_cases(root, resolved, list_file, labelled=False)
        if problems:
            raise problems[0]
        if not cases:
            raise DataError(path, "lists no case without a label to predict: set --data.predict_dir <folder>")
        return cases
    nnunet = layout == "nnunet" or (layout == "auto" and (root / "imagesTr").is_dir())
    if predict_dir is not None:
        folder = Path(predict_dir)
    elif nnunet and (root / "imagesTs").is_dir():
        folder = root / "imagesTs"
    else:
        raise DataError(root, "no volumes to predict: set --data.predict_dir <folder>")
    files = list_volumes(folder)
    if not files:
        raise DataError(folder, f"holds no volumes ({', '.join(VOLUME_SUFFIXES)} or DICOM folders)")
    if not nnunet:
        return [VolumeCase(name, (path,)) for name, path in files.items()]
    grouped, problems = group_channels(files)
    if problems:
        raise problems[0]
    return [VolumeCase(name, paths) for name, paths in grouped.items()]
