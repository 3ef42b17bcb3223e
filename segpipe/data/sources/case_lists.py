"""Explicit case lists: a CSV or JSON file naming each case's image (and label) files.

CSV (a header row; ``name`` optional; several image columns, or ``;`` between paths, for channels)::

    image,label                       name,image_0000,image_0001,label
    scans/a.nii.gz,masks/a.nii.gz     a,t1/a.nii.gz,t2/a.nii.gz,seg/a.nii.gz

JSON: a list of ``{"image": "a.nii.gz" | ["t1.nii.gz", "t2.nii.gz"], "label": "a_seg.nii.gz", "name": "a"}``,
or a Decathlon-style object ``{"training": [...], "test": ["x.nii.gz", ...]}``.

Relative paths are relative to the list file's folder. A row without a label is a case to predict. A
listed ``x.nii.gz`` that does not exist while ``x_0000.nii.gz`` does stands for the channel files
``x_0000``, ``x_0001``, ... (nnU-Net v1's dataset.json lists cases that way).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from segpipe.data.sources.dataset_json import load_json
from segpipe.errors import DataError
from segpipe.io.volumes import volume_name, volume_suffix

LIST_SUFFIXES = (".csv", ".json")
# (case name, image files in channel order, label file or None)
CaseEntry = tuple[str, tuple[Path, ...], Path | None]
_IMAGE_COLUMN = re.compile(r"^image(?:_(\d+))?$")
_CHANNEL_NAME = re.compile(r"^(?P<case>.+)_\d{4}$")


def is_case_list(path: Path) -> bool:
    """Whether ``path`` names a CSV or JSON file (existing or not)."""
    return path.suffix.lower() in LIST_SUFFIXES and not path.is_dir()


def _split_paths(cell: str | None) -> list[str]:
    return [part.strip() for part in (cell or "").split(";") if part.strip()]


def _csv_rows(path: Path) -> list[tuple[str, list[str], str | None, str | None]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:  # utf-8-sig: spreadsheet exports
            reader = csv.DictReader(file)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = list(reader)
    except UnicodeDecodeError:
        raise DataError(path, "is not a UTF-8 text file") from None
    except csv.Error as err:
        raise DataError(path, f"is not a valid CSV file ({err})") from None
    image_columns = sorted((int(m[1] or 0), c) for c in columns if (m := _IMAGE_COLUMN.match(c.lower())) is not None)
    if not image_columns:
        raise DataError(path, f"needs an 'image' column (or image_0000, image_0001, ...); found columns {columns}")
    lower = {c.lower(): c for c in columns}
    label_column = lower.get("label") or lower.get("mask")
    found = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        images = [p for _, column in image_columns for p in _split_paths(row.get(column))]
        label = (row.get(label_column) or "").strip() if label_column else ""
        name = (row.get(lower.get("name", "")) or "").strip()
        if images or label:
            found.append((f"line {line}", images, label or None, name or None))
    return found


def _json_entry(where: str, entry: Any) -> tuple[str, list[str], str | None, str | None]:
    if isinstance(entry, str):
        return where, [entry], None, None
    if not isinstance(entry, dict):
        return where, [], None, None
    image = entry.get("image")
    images = [image] if isinstance(image, str) else [str(p) for p in image] if isinstance(image, list) else []
    label = entry.get("label")
    name = entry.get("name")
    return where, images, str(label) if label else None, str(name) if name else None


def _json_rows(path: Path) -> list[tuple[str, list[str], str | None, str | None]]:
    content = load_json(path)
    if isinstance(content, dict) and isinstance(content.get("training"), list):
        groups = [("training", content["training"]), ("test", content.get("test") or [])]
    elif isinstance(content, list):
        groups = [("entry", content)]
    else:
        raise DataError(path, 'must hold a list of {"image": ..., "label": ...} or {"training": [...]}')
    return [_json_entry(f"{group} {i}", entry) for group, entries in groups for i, entry in enumerate(entries)]


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _channel_files(path: Path) -> tuple[Path, ...]:
    """``x.nii.gz`` itself, or ``x_0000.nii.gz, x_0001.nii.gz, ...`` when only those exist."""
    suffix = volume_suffix(path)
    if path.exists() or path.is_symlink() or suffix is None:
        return (path,)
    channels: list[Path] = []
    while (candidate := path.with_name(f"{volume_name(path)}_{len(channels):04d}{suffix}")).exists():
        channels.append(candidate)
    return tuple(channels) or (path,)


def _case_name(images: list[str]) -> str:
    names = [volume_name(p) for p in images]
    if len(names) > 1:
        bases = {m["case"] if (m := _CHANNEL_NAME.match(n)) else n for n in names}
        if len(bases) == 1:
            return bases.pop()
    return names[0]


def read_case_list(path: str | Path) -> tuple[list[CaseEntry], list[DataError]]:
    """The cases a list file names and one problem per entry that cannot be used.

    Problems: an entry without an image, a case name used twice. Listed files are not opened here;
    reading them reports missing or broken files.

    Raises:
        DataError: naming ``path`` when it is missing, not CSV/JSON, unparsable, or lacks an image column.
    """
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise DataError(
            path, "is a folder, expected a .csv or .json case list" if path.is_dir() else "file does not exist"
        )
    suffix = path.suffix.lower()
    if suffix not in LIST_SUFFIXES:
        raise DataError(path, f"a case list must be a {' or '.join(LIST_SUFFIXES)} file")
    rows = _csv_rows(path) if suffix == ".csv" else _json_rows(path)
    base = path.parent
    entries: list[CaseEntry] = []
    problems: list[DataError] = []
    first_use: dict[str, str] = {}
    for where, images, label, name in rows:
        if not images:
            problems.append(DataError(path, f"{where}: no image path"))
            continue
        name = name or _case_name(images)
        if name in first_use:
            problems.append(DataError(path, f"{where}: case name {name!r} is already used ({first_use[name]})"))
            continue
        first_use[name] = where
        files = tuple(f for text in images for f in _channel_files(_resolve(base, text)))
        entries.append((name, files, _resolve(base, label) if label else None))
    if not entries and not problems:
        raise DataError(path, "lists no cases")
    return entries, problems
