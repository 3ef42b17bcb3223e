"""TorchScript files: a traced network with its metadata in ``_extra_files``; loading one back to run it.

Load in C++ with ``torch::jit::load(path, device, extra_files)`` (``extra_files["segpipe.json"]``) or in
Python with ``torch.jit.load(path, _extra_files={"segpipe.json": ""})``. TorchScript is deprecated by
PyTorch in favour of ``torch.export``; ONNX is the format to prefer for new deployments.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXTRA_FILE = "segpipe.json"


class FixedSpatialSize(nn.Module):
    """Run ``net`` on inputs of one spatial size and refuse others with a message (scripted, not traced)."""

    def __init__(self, net: nn.Module, spatial_size: list[int]) -> None:
        super().__init__()
        self.net = net
        self.spatial_size: list[int] = [int(s) for s in spatial_size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = list(x.shape[2:])
        if size != self.spatial_size:
            raise RuntimeError(
                "this export takes inputs of spatial size "
                + str(self.spatial_size)
                + " only, got "
                + str(size)
                + "; export again with --input-size for another size"
            )
        return self.net(x)


def save_torchscript(
    module: nn.Module, example: torch.Tensor, path: Path, metadata_json: str, dynamic_spatial: bool
) -> None:
    """Trace ``module`` on ``example`` (B, C, *S) and save it with ``metadata_json`` as ``segpipe.json``.

    The batch size is always dynamic; the spatial size too when ``dynamic_spatial`` (the module's shape
    logic must then be traceable, see :mod:`segpipe.export.traceable`); otherwise a scripted guard
    refuses other spatial sizes.
    """
    with warnings.catch_warnings():
        # shape branches frozen by tracing are the exporter's check to catch, numerically
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        with torch.no_grad():
            scripted: torch.jit.ScriptModule = torch.jit.trace(module, example, check_trace=False)
            if not dynamic_spatial:
                scripted = torch.jit.script(FixedSpatialSize(scripted, list(example.shape[2:])))
        torch.jit.save(scripted, str(path), _extra_files={EXTRA_FILE: metadata_json})


def read_torchscript_metadata(path: Path) -> str:
    """The ``segpipe.json`` stored inside a TorchScript file (empty if it has none)."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return extra[EXTRA_FILE]


def torchscript_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping a float32 (B, C, *S) array to the saved module's logits, on the CPU, run
    without the JIT's optimisation passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(image: np.ndarray) -> np.ndarray:
        # the graph as saved, without the JIT's per-shape profiling and fusion passes (slow to warm up,
        # and not what is being checked)
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return module(torch.from_numpy(image)).numpy()

    return run
