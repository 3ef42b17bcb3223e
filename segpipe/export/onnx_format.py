"""ONNX files: the network exported by ``torch.export`` (dynamo) with its metadata in ``metadata_props``.

The input is named ``image`` (float32, B x C x *S) and the output ``logits`` (float32, B x K x *S); batch
and spatial dims are symbolic (``batch``, ``height``, ``width``; 3D ``x``, ``y``, ``z``) unless the spatial
size is fixed. Metadata: the key ``segpipe`` holds the whole JSON, and each of :data:`FLAT_KEYS` is also
stored on its own (values are strings, JSON-encoded where not plain), readable with
``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
FLAT_KEYS = (
    "in_channels",
    "num_classes",
    "class_names",
    "spatial_dims",
    "normalization",
    "patch_size",
    "sliding_window",
)
# protobuf cannot serialise a model past 2 GiB: larger weights go to a side file <name>.data
_EXTERNAL_DATA_BYTES = 1_800_000_000
SPATIAL_NAMES = {2: ("height", "width"), 3: ("x", "y", "z")}


def save_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    metadata: dict[str, Any],
    dynamic_spatial: bool,
    opset: int | None = None,
) -> int:
    """Export ``module`` traced on ``example`` (B, C, *S) to ``path``; returns the opset used.

    Raises:
        RuntimeError, ValueError, TypeError: from ``torch.onnx.export`` when the network cannot be
            exported (the caller reports them).
    """
    spatial_dims = example.dim() - 2
    axes: dict[int, Any] = {0: Dim("batch")}
    if dynamic_spatial:
        for i, name in enumerate(SPATIAL_NAMES[spatial_dims]):
            axes[2 + i] = Dim(name)
    with torch.no_grad(), _quiet_onnx_ir():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(axes,),
            opset_version=opset,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata_props(metadata))
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = param_bytes > _EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(path), save_as_external_data=external, location=f"{path.name}.data")
    onnx.checker.check_model(str(path))
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


@contextlib.contextmanager
def _quiet_onnx_ir() -> Iterator[None]:
    """Silence onnx_ir's warning that an empty attribute list (SegNet's unpooling pads) defaults to INTS,
    which is the right type."""
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def metadata_props(metadata: dict[str, Any]) -> dict[str, str]:
    """String key/values for ONNX ``metadata_props``: ``segpipe`` (all of it) plus :data:`FLAT_KEYS`."""
    props = {"segpipe": json.dumps(metadata, sort_keys=True)}
    for key in FLAT_KEYS:
        value = metadata.get(key)
        props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping a float32 (B, C, *S) array to the model's logits with ONNX Runtime on the CPU."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(image: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: image})[0]

    return run
