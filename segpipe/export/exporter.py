"""Export a SegmentationTask checkpoint to ONNX or TorchScript, with metadata, checked against PyTorch."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

import segpipe
from segpipe.config import data_init_args, read_config
from segpipe.errors import ExportError
from segpipe.export.checkpoint import build_network, load_checkpoint, model_hparams
from segpipe.export.metadata import preprocessing, stored_preprocessing_plan
from segpipe.export.onnx_format import INPUT_NAME, OUTPUT_NAME, SPATIAL_NAMES, onnx_runner, save_onnx
from segpipe.export.torchscript_format import save_torchscript, torchscript_runner
from segpipe.export.traceable import plan_export
from segpipe.preprocessing.plan import PLAN_KEY

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_SPATIAL_SIZE = {2: 256, 3: 64}
ATOL = RTOL = 1e-4
# 2D images are (H, W) arrays; volumes keep the axis order of the file (NIfTI i, j, k), as in training
_LAYOUTS = {2: "B,C,H,W", 3: "B,C,X,Y,Z"}


@dataclass
class ExportResult:
    """The files written, their metadata and the check against the PyTorch network.

    ``checks`` holds one ``(input shape, max |exported - PyTorch|)`` per checked input (empty when the
    check was skipped).
    """

    path: Path
    metadata_path: Path
    metadata: dict[str, Any]
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float | None:
        return max((diff for _, diff in self.checks), default=None)


def parse_spatial_size(text: str, spatial_dims: int) -> list[int]:
    """``"256"`` -> [256, 256]; ``"96x80"`` -> [96, 80]; 3D: ``"64"`` or ``"32x64x64"``.

    Raises:
        ExportError: if a part is not a positive integer or the number of parts is neither 1 nor
            ``spatial_dims``.
    """
    parts = [p for p in re.split(r"[x,\s]+", text.strip().lower()) if p]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, spatial_dims):
        example = "256x256" if spatial_dims == 2 else "64x128x128"
        raise ExportError(
            f"--input-size must be one positive integer or {spatial_dims} joined by 'x' "
            f"(e.g. {example}) for a {spatial_dims}D model, got {text!r}"
        )
    sizes = [int(p) for p in parts]
    return sizes * spatial_dims if len(sizes) == 1 else sizes


def default_output(ckpt: str | Path, fmt: str) -> Path:
    """``<checkpoint without .ckpt>.onnx`` or ``.torchscript.pt``, beside the checkpoint."""
    path = Path(ckpt)
    return path.with_name(path.stem + SUFFIXES[fmt])


def check_shapes(example: tuple[int, ...], dynamic_spatial: bool) -> list[tuple[int, ...]]:
    """Inputs to compare on: the traced shape, then batch 2 at other, odd and unequal spatial sizes."""
    batch_c, spatial = example[:2], example[2:]
    if not dynamic_spatial:
        return [example, (2, batch_c[1], *spatial)]
    other = tuple(s + s // 4 + 1 + 2 * i for i, s in enumerate(spatial))
    return [example, (2, batch_c[1], *other)]


def export_checkpoint(
    ckpt: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    config: str | Path | None = None,
    config_overrides: Sequence[str] = (),
    input_size: str | None = None,
    fixed_size: bool = False,
    verify: bool = True,
    opset: int | None = None,
) -> ExportResult:
    """Export the network of ``ckpt`` and write ``<output>`` plus ``<output>.json``.

    Args:
        ckpt: Lightning checkpoint of a :class:`segpipe.tasks.SegmentationTask`.
        fmt: ``onnx`` or ``torchscript``.
        output: file to write (default: beside the checkpoint, see :func:`default_output`).
        config: training YAML whose data section gives normalisation and patch size (when the checkpoint
            does not hold the DataModule's hyperparameters), read by the fit parser.
        config_overrides: command-line overrides of ``config``, as for ``segpipe fit``
            (e.g. ``["--data.init_args.normalization", "none"]``).
        input_size: spatial size to trace with (default: the patch size, else 256^2 or 64^3); the
            exported size when the spatial size is fixed.
        fixed_size: export for ``input_size`` only, even where the architecture allows any size.
        verify: run the exported file and PyTorch on the traced and a second input size and require
            ``|exported - pytorch| <= 1e-4 + 1e-4 |pytorch|``.
        opset: ONNX opset (default: the exporter's).

    Raises:
        ExportError: for a bad checkpoint, format or size, overrides without a config, a network the
            exporter rejects, or an export whose outputs differ from PyTorch (the files are then removed).
        ConfigError: for a config or override that the fit parser rejects.
    """
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if config_overrides and config is None:
        raise ExportError(f"unrecognised arguments {' '.join(config_overrides)} (overrides need --config)")
    checkpoint = load_checkpoint(ckpt)
    hp = model_hparams(checkpoint, ckpt)
    net = build_network(checkpoint, ckpt)
    data_config = data_init_args(read_config(["--config", str(config), *config_overrides])) if config else None
    prep = preprocessing(checkpoint, data_config, hp["spatial_dims"], str(config or ""))
    spatial_dims = hp["spatial_dims"]
    if input_size is not None:
        spatial = parse_spatial_size(input_size, spatial_dims)
    else:
        spatial = prep["patch_size"] or [DEFAULT_SPATIAL_SIZE[spatial_dims]] * spatial_dims
    example_shape = (1, hp["in_channels"], *spatial)
    plan = plan_export(net, fixed_size)

    path = Path(output) if output is not None else default_output(ckpt, fmt)
    sidecar = path.with_name(path.name + ".json")
    metadata = build_metadata(hp, prep, fmt, example_shape, plan.dynamic_spatial, plan.note, Path(ckpt).name)
    if (volume_plan := stored_preprocessing_plan(checkpoint)) is not None:
        metadata[PLAN_KEY] = volume_plan  # what `segpipe predict --onnx` preprocesses volumes with
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(example_shape, generator=torch.Generator().manual_seed(0))
    extra: dict[str, Any] = {}
    try:
        if fmt == "onnx":
            extra["onnx_opset"] = save_onnx(plan.module, example, path, metadata, plan.dynamic_spatial, opset)
        else:
            save_torchscript(plan.module, example, path, json.dumps(metadata, sort_keys=True), plan.dynamic_spatial)
    except Exception as err:  # any exporter failure means: this network cannot be exported this way
        _remove(path)
        raise ExportError(f"cannot export {hp['model']} to {fmt}: {_first_line(err)}") from err

    result = ExportResult(path, sidecar, metadata)
    if verify:
        result.checks = _verify(net, path, fmt, check_shapes(example_shape, plan.dynamic_spatial), hp["model"])
        extra["verification"] = {
            "inputs": [list(shape) for shape, _ in result.checks],
            "max_abs_diff": result.max_abs_diff,
            "tolerance": f"|exported - pytorch| <= {ATOL} + {RTOL} * |pytorch|",
        }
    sidecar.write_text(json.dumps({**metadata, **extra}, indent=2, sort_keys=True) + "\n")
    result.metadata = {**metadata, **extra}
    return result


def build_metadata(
    hp: dict[str, Any],
    prep: dict[str, Any],
    fmt: str,
    example_shape: tuple[int, ...],
    dynamic_spatial: bool,
    note: str,
    checkpoint_name: str,
) -> dict[str, Any]:
    """The JSON stored inside the exported file and beside it (see the README's GPU servers section)."""
    spatial_dims = hp["spatial_dims"]
    spatial: list[int | str] = (
        list(SPATIAL_NAMES[spatial_dims]) if dynamic_spatial else [int(s) for s in example_shape[2:]]
    )
    layout = _LAYOUTS[spatial_dims]
    return {
        "segpipe_version": segpipe.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "format": fmt,
        "checkpoint": checkpoint_name,
        "model": hp["model"],
        "model_kwargs": hp["model_kwargs"],
        "spatial_dims": spatial_dims,
        "in_channels": hp["in_channels"],
        "num_classes": hp["num_classes"],
        "class_names": hp["class_names"],
        "input": {
            "name": INPUT_NAME if fmt == "onnx" else "x",
            "dtype": "float32",
            "layout": layout,
            "shape": ["batch", hp["in_channels"], *spatial],
        },
        "output": {
            "name": OUTPUT_NAME if fmt == "onnx" else "output",
            "dtype": "float32",
            "layout": layout.replace("C", "K"),
            "shape": ["batch", hp["num_classes"], *spatial],
            "meaning": "logits; argmax over dim 1 gives the label map, softmax over dim 1 the probabilities",
        },
        "dynamic_batch": True,
        "dynamic_spatial": dynamic_spatial,
        "spatial_size": "any" if dynamic_spatial else [int(s) for s in example_shape[2:]],
        "spatial_size_note": note,
        "traced_input_shape": list(example_shape),
        "normalization": prep["normalization"],
        "patch_size": prep["patch_size"],
        "patch_size_source": prep["patch_size_source"],
        "sliding_window": prep["sliding_window"],
    }


def _verify(
    net: nn.Module, path: Path, fmt: str, shapes: list[tuple[int, ...]], model: str
) -> list[tuple[tuple[int, ...], float]]:
    run = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path)
    generator = torch.Generator().manual_seed(1)
    checks: list[tuple[tuple[int, ...], float]] = []
    for i, shape in enumerate(shapes):
        image = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = net(image).numpy()
        hint = (
            "its shape logic does not generalise beyond the traced size: export with --fixed-size"
            if i > 0 and shape[2:] != shapes[0][2:]
            else "the network does not export faithfully"
        )
        try:
            got = run(image.numpy())
        except Exception as err:
            problem = f"fails on input {_shape(shape)} ({_first_line(err)})"
        else:
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape and got.size else 0.0
            if got.shape != expected.shape:
                problem = f"returns {_shape(got.shape)} for input {_shape(shape)}, PyTorch {_shape(expected.shape)}"
            elif math.isnan(diff) or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
                problem = f"differs from PyTorch on input {_shape(shape)} (max |diff| {diff:.2e} > {ATOL})"
            else:
                checks.append((tuple(shape), diff))
                continue
        _remove(path)
        raise ExportError(f"the {fmt} export of {model} {problem}; {hint}")
    return checks


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(str(int(s)) for s in shape)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _remove(path: Path) -> None:
    for file in (path, path.with_name(path.name + ".data"), path.with_name(path.name + ".json")):
        file.unlink(missing_ok=True)
