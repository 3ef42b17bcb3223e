"""Run a ``segpipe export --format onnx`` file with ONNX Runtime, as ``segpipe predict`` runs a checkpoint.

The exported file carries its preprocessing and inference settings as metadata (``segpipe`` in its
``metadata_props``, see :mod:`segpipe.export.onnx_format`). This module reads them and repeats segpipe's
own steps around the ONNX Runtime session: the 2D normalisation of :mod:`segpipe.preprocessing.normalize`,
the volume preprocessing of :func:`segpipe.preprocessing.steps.volume_preprocessing` (from the resolved
``preprocessing_plan``), and the whole-input inference of :class:`segpipe.inference.WindowedInference`
(MONAI's ``sliding_window_inference`` with the session as predictor, flip TTA), so that masks equal the
PyTorch path's. No Lightning is needed to run it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from monai.transforms import Compose

from segpipe.data.datasets import as_augmentable
from segpipe.data.sources.layouts import VolumeCase
from segpipe.errors import DataError
from segpipe.inference.sliding_window import WindowedInference
from segpipe.preprocessing.geometry import GEOMETRY_KEY
from segpipe.preprocessing.normalize import apply_normalization, normalization_stats
from segpipe.preprocessing.plan import PLAN_KEY, PreprocessingPlan
from segpipe.preprocessing.steps import volume_preprocessing

METADATA_KEY = "segpipe"
# windows (or slices) per ONNX Runtime call; the result does not depend on it
BATCH_SIZE = 4


@dataclass(frozen=True)
class OnnxSegmenter:
    """An exported segpipe network in an ONNX Runtime session (CPU), with the export's metadata.

    Calling it maps a float32 tensor (B, C, *spatial) to logits (B, K, *spatial), so it stands where a
    torch network does in :class:`~segpipe.inference.WindowedInference`.
    """

    path: Path
    session: ort.InferenceSession
    metadata: dict[str, Any]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
        inputs = {self.metadata["input"]["name"]: array}
        return torch.from_numpy(self.session.run([self.metadata["output"]["name"]], inputs)[0])

    @property
    def spatial_dims(self) -> int:
        return int(self.metadata["spatial_dims"])

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    def preprocessing_plan(self) -> PreprocessingPlan:
        """The resolved volume preprocessing the network was trained with.

        Raises:
            DataError: naming the file when it was exported without one (a model trained on 2D images,
                or an export that predates the plan).
        """
        plan = self.metadata.get(PLAN_KEY)
        if not isinstance(plan, dict):
            raise DataError(
                self.path,
                f"holds no '{PLAN_KEY}' in its segpipe metadata (spacing, orientation, crop): it cannot "
                "preprocess volumes as in training; export a checkpoint of a volume model again",
            )
        try:
            return PreprocessingPlan.from_dict(plan)
        except (TypeError, ValueError) as err:
            raise DataError(self.path, f"invalid '{PLAN_KEY}' in its segpipe metadata: {err}") from None

    def inference(self, slice_axis: int = 2) -> WindowedInference:
        """Whole inputs as the exported model's task ran them: its sliding window (roi, overlap) when it
        had one, else one pass; float32 probabilities on the CPU. ``slice_axis``: a 2D network's on volumes."""
        window = self.metadata.get("sliding_window") or {}
        roi, overlap = window.get("roi"), float(window.get("overlap", 0.5))
        return WindowedInference(self.spatial_dims, roi, overlap, BATCH_SIZE, slice_axis, dtype="float32")


def load_segmenter(path: str | Path) -> OnnxSegmenter:
    """Open ``path`` with ONNX Runtime and read its segpipe metadata.

    Raises:
        DataError: naming the file when it is missing, is not an ONNX model ONNX Runtime can load, or
            holds no (or unreadable) segpipe metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "ONNX file does not exist" if not path.exists() else "is not a file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own pybind exception types for every load failure
        detail = " ".join(str(err).replace(str(path), "").split())[:200]
        raise DataError(path, f"is not an ONNX model that ONNX Runtime can load ({detail})") from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise DataError(path, "holds no segpipe metadata: export it with `segpipe export --format onnx`")
    try:
        metadata = json.loads(text)
        missing = [k for k in ("spatial_dims", "num_classes", "normalization", "input", "output") if k not in metadata]
    except (json.JSONDecodeError, TypeError):
        raise DataError(path, "its segpipe metadata is not a JSON object") from None
    if missing:
        raise DataError(path, f"its segpipe metadata lacks {', '.join(missing)}")
    return OnnxSegmenter(path, session, metadata)


def image_probabilities(segmenter: OnnxSegmenter, image: np.ndarray, tta_axes: Sequence[int] = ()) -> torch.Tensor:
    """Class probabilities (K, H, W) float32 of a 2D ``image`` (H, W, C) as read by
    :func:`segpipe.io.images.read_image`, normalised as the metadata says (per image, or with the dataset
    statistics stored in it), as :class:`segpipe.data.datasets.SegmentationDataset` does."""
    norm = segmenter.metadata["normalization"]
    pixels = as_augmentable(image)
    shift, scale = normalization_stats(pixels, norm["mode"], norm.get("mean"), norm.get("std"))
    normalised = apply_normalization(pixels, shift, scale)
    tensor = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        return segmenter.inference().probabilities(segmenter, tensor, tta_axes)[0]


def volume_probabilities(
    segmenter: OnnxSegmenter, case_files: Sequence[Path], name: str, tta_axes: Sequence[int] = ()
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Class probabilities (K, *preprocessed shape) of the volume whose channel files are ``case_files``,
    preprocessed by the metadata's plan, and its geometry record (for
    :func:`segpipe.inference.volume_writer.write_volume_prediction`).

    Raises:
        DataError: for an unreadable volume, or a file exported without its preprocessing plan.
    """
    plan = segmenter.preprocessing_plan()
    item = Compose(volume_preprocessing(plan))({"case": VolumeCase(name, tuple(case_files))})
    image = torch.as_tensor(item["image"], dtype=torch.float32).as_subclass(torch.Tensor)[None]
    with torch.no_grad():
        probabilities = segmenter.inference(plan.slice_axis).probabilities(segmenter, image, tta_axes)
    return probabilities[0], item[GEOMETRY_KEY]
