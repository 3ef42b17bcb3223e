"""Read and validate a ``dataset.json``: nnU-Net v2 or Medical Segmentation Decathlon (and nnU-Net v1).

nnU-Net v2::

    {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 131,
     "file_ending": ".nii.gz"}

Decathlon (nnU-Net v1 uses the same keys)::

    {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema"}, "numTraining": 484,
     "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}, ...],
     "test": ["./imagesTs/BRATS_485.nii.gz", ...]}

Labels must be the consecutive values 0..K-1 (0 the background), as both nnU-Net and the Decathlon
require; region-based nnU-Net labels (lists of values) are refused, since segpipe trains one class per
voxel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from segpipe.errors import DataError
from segpipe.io.images import IMAGE_SUFFIXES
from segpipe.io.volumes import VOLUME_SUFFIXES

# nnU-Net v2 reads 2D image datasets too (its NaturalImage2DIO and Tiff readers): their endings are valid.
FILE_ENDINGS = VOLUME_SUFFIXES + IMAGE_SUFFIXES

DATASET_JSON = "dataset.json"
Flavour = Literal["nnunetv2", "decathlon"]


@dataclass(frozen=True)
class DatasetJson:
    """What a ``dataset.json`` declares.

    ``class_names[k]`` names label value ``k``; ``training``/``test`` are the Decathlon case lists as
    written (paths relative to the file's folder), None for nnU-Net v2.
    """

    path: Path
    flavour: Flavour
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    num_training: int
    file_ending: str | None = None
    training: tuple[dict[str, Any], ...] | None = None
    test: tuple[Any, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)


def json_flavour(content: Any) -> Flavour | None:
    """``nnunetv2`` (``channel_names``), ``decathlon`` (``modality`` or ``training``), or None."""
    if not isinstance(content, dict):
        return None
    if "channel_names" in content:
        return "nnunetv2"
    if "modality" in content or "training" in content:
        return "decathlon"
    return None


def load_json(path: Path) -> Any:
    """Parse a JSON file.

    Raises:
        DataError: naming ``path`` when it is missing, not a file, not UTF-8 or not valid JSON.
    """
    if not path.is_file():
        raise DataError(path, "is a folder, expected a JSON file" if path.is_dir() else "file does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(path, "is not a UTF-8 text file") from None
    except json.JSONDecodeError as err:
        raise DataError(path, f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def _indexed_names(value: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    """``{"0": "CT", "1": "PET"}`` -> ``("CT", "PET")``; keys must be 0..N-1."""
    if not isinstance(value, dict) or not value:
        problems.append(f'\'{key}\' must be a non-empty mapping like {{"0": "name"}}')
        return ()
    try:
        by_index = {int(k): str(v) for k, v in value.items()}
    except ValueError:
        problems.append(f'\'{key}\' keys must be indices "0", "1", ...; got {sorted(value)}')
        return ()
    if sorted(by_index) != list(range(len(by_index))):
        problems.append(f"'{key}' indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
        return ()
    return tuple(by_index[i] for i in range(len(by_index)))


def _nnunet_labels(value: Any, problems: list[str]) -> tuple[str, ...]:
    """``{"background": 0, "liver": 1}`` -> ``("background", "liver")``."""
    if not isinstance(value, dict) or not value:
        problems.append("'labels' must be a non-empty mapping {name: value}, e.g. {\"background\": 0}")
        return ()
    regions = [name for name, v in value.items() if isinstance(v, list | tuple)]
    if regions:
        problems.append(f"region-based labels (lists of values) are not supported: {', '.join(regions)}")
        return ()
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value.values()):
        problems.append(f"'labels' values must be integers, got {value}")
        return ()
    names = {v: str(name) for name, v in value.items()}
    if len(names) != len(value) or sorted(names) != list(range(len(names))):
        problems.append(f"'labels' values must be 0..{len(value) - 1}, each once (0 = background), got {value}")
        return ()
    return tuple(names[i] for i in range(len(names)))


def _count(value: Any, key: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(f"'{key}' must be a count >= 0, got {value!r}")
        return 0
    return value


def _training_entries(value: Any, problems: list[str]) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        problems.append('\'training\' must be a list of {"image": ..., "label": ...}')
        return ()
    bad = [i for i, e in enumerate(value) if not (isinstance(e, dict) and isinstance(e.get("image"), str))]
    if bad:
        problems.append(f"'training' entries {bad[:5]} lack an \"image\" path")
        return ()
    return tuple(value)


def read_dataset_json(path: str | Path) -> DatasetJson:
    """Read and validate a ``dataset.json`` (nnU-Net v2 or Decathlon flavour, told apart by its keys).

    Raises:
        DataError: naming ``path`` when it is not valid JSON, is neither flavour, or has missing or
            malformed fields (all of them, in one message).
    """
    path = Path(path)
    content = load_json(path)
    flavour = json_flavour(content)
    if flavour is None:
        raise DataError(
            path,
            "is neither an nnU-Net v2 dataset.json (channel_names, labels, numTraining, file_ending) "
            "nor a Decathlon one (modality, labels, numTraining, training)",
        )
    required = ("channel_names", "labels", "numTraining", "file_ending")
    if flavour == "decathlon":
        required = ("modality", "labels", "numTraining", "training")
    problems = [f"'{key}' is missing" for key in required if key not in content]
    if problems:
        raise DataError(path, "; ".join(problems))
    info: dict[str, Any] = {"num_training": _count(content["numTraining"], "numTraining", problems)}
    if flavour == "nnunetv2":
        info["channel_names"] = _indexed_names(content["channel_names"], "channel_names", problems)
        info["class_names"] = _nnunet_labels(content["labels"], problems)
        ending = content["file_ending"]
        if not isinstance(ending, str) or ending.lower() not in FILE_ENDINGS:
            problems.append(f"'file_ending' must be one of {', '.join(FILE_ENDINGS)}, got {ending!r}")
        info["file_ending"] = ending
    else:
        info["channel_names"] = _indexed_names(content["modality"], "modality", problems)
        info["class_names"] = _indexed_names(content["labels"], "labels", problems)
        info["training"] = _training_entries(content["training"], problems)
        test = content.get("test", [])
        if not isinstance(test, list):
            problems.append("'test' must be a list of image paths")
        info["test"] = tuple(test) if isinstance(test, list) else ()
    if problems:
        raise DataError(path, "; ".join(problems))
    return DatasetJson(path=path, flavour=flavour, **info)
