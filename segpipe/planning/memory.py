"""The training memory of a planned network, from segpipe's own summary model (:mod:`segpipe.models.summary`:
activations kept for the backward pass at the run's precision, plus weights, gradients and AdamW
moments), so the planner budgets the same figure ``segpipe summary`` reports."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from segpipe.models.registry import build_model
from segpipe.models.summary import summarize

CPU_MEMORY_DEFAULT = 8 * 2**30  # bytes budgeted on a CPU: nnU-Net's reference GPU size (8 GB), well below host RAM
BUDGET_SHARE = 0.75  # of the device memory: convolution workspace, allocator caching and the data are not estimated


def device_memory_bytes() -> tuple[int, str]:
    """This machine's memory for training and where it comes from: the CUDA device's total memory, or
    :data:`CPU_MEMORY_DEFAULT` (capped at the host's RAM) without one."""
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        return int(total), f"CUDA device {torch.cuda.get_device_name(0)}"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(CPU_MEMORY_DEFAULT, int(ram)), "CPU (no CUDA device)"


def training_bytes(
    model: str,
    model_kwargs: dict[str, Any],
    in_channels: int,
    num_classes: int,
    input_shape: Sequence[int],
    precision: str,
) -> int:
    """Estimated bytes of one training step of ``model`` on a batch ``input_shape`` (B, *spatial), built
    on the meta device (shapes only): :attr:`ModelSummary.training_bytes_estimate`.

    Raises:
        ValueError: for an unknown model or a bad option value.
    """
    options = dict(model_kwargs)
    batch, *spatial = (int(s) for s in input_shape)
    shape = (batch, in_channels, *spatial)
    try:
        with torch.device("meta"):
            network = build_model(model, len(spatial), in_channels, num_classes, **options)
        return summarize(network, shape, precision).training_bytes_estimate
    except (NotImplementedError, RuntimeError):  # an operator without a meta kernel: real weights, as `segpipe summary`
        network = build_model(model, len(spatial), in_channels, num_classes, **options)
        return summarize(network, shape, precision).training_bytes_estimate
