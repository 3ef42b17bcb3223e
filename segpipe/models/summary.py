"""``segpipe summary``: per-layer parameters, multiply-adds and activation memory of a network.

One forward pass with hooks on every leaf module (a module without children) records, per call:

* **output shape** of the first tensor the module returns;
* **parameters** of the module (counted at its first call only, so shared modules are not doubled);
* **multiply-adds (MACs)** for the whole batch:

  - convolution: ``output elements x (in_channels / groups) x prod(kernel)``;
  - transposed convolution: ``input elements x (out_channels / groups) x prod(kernel)``;
  - linear: ``output elements x in_features`` (= batch x in x out for a vector input);
  - everything else (normalisation, activations, pooling, unpooling, interpolation, dropout): 0, since
    these are element-wise or comparisons rather than multiply-adds, and negligible next to the
    convolutions. Biases are not counted (one add per output);

* **activation values**: elements of the floating-point tensors the module returns **that occupy new
  memory**. An output that is its input (in-place ``ReLU(inplace=True)``, ``Dropout`` in eval mode,
  ``Identity``) or a view of it (``Flatten``) is not counted again. This is the rule of the lecture
  tables (VGG16 lists CONV, POOL and FC outputs, not the in-place ReLUs). Integer outputs (max-pooling
  indices kept for SegNet's unpooling) are counted in bytes at their own dtype size, not as values.

Tensors created by functional code between modules (``torch.cat`` of U-Net skips, ``F.pad``, the sums
of FCN's skips) are caught by a dispatch mode and reported on one ``(functional ops)`` row, with the
same rule: outputs that alias an input (views, in-place ops) are not counted.

Totals: parameters, MACs for the batch and per sample, forward values = input + layer outputs, their
bytes at the chosen precision (32 -> 4 bytes, 16 / bf16 -> 2, 64 -> 8), and the training memory
estimate::

    training_bytes = forward_bytes + param_bytes x (1 weights + 1 gradients + 2 AdamW moments)

where ``forward_bytes`` are the activations kept for the backward pass (input included) and
``param_bytes`` are the parameters at their storage dtype (float32 for ``32``, ``16-mixed`` and
``bf16-mixed``, 2 bytes for ``16-true``/``bf16-true``). Gradients of activations, workspace of the
convolution kernels and allocator overhead are not included; ``benchmarks/summary_memory.py``
compares the estimate with a measured training step.

The forward runs in eval mode under ``torch.no_grad()`` on the device of the model's parameters, and
the model's mode is restored; so dropout, an identity in eval mode, adds nothing (in training it also
allocates its output and mask). ``segpipe summary`` (:mod:`segpipe.cli.summary`) builds the model on
the ``meta`` device, so even a 138M parameter network at 512x512 is summarised from shapes alone,
without allocating or computing.

The lecture's VGG16 example (1x3x224x224) gives 138,357,544 parameters and 15,262,696 forward values
(input 150,528 + conv 13,547,520 + pool 1,530,368 + torchvision's 7x7 adaptive avg-pool 25,088 + fc
9,192), 61 MB (58 MiB) in float32. The lecture states 24M values (93 MB), but its own table sums to
15.2M (an arithmetic slip of the cs231n notes it copies, cs231n/cs231n.github.io#88); counting the
in-place ReLU outputs as well (``include_inplace=True``) gives 28.7M, so no layer set gives 24M.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

# Private torch modules: TorchDispatchMode and tree_flatten have no public home yet; they are how PyTorch's
# own FlopCounterMode counts functional operations.
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_ACTIVATION_BYTES = {"64": 8, "32": 4, "16": 2, "bf16": 2}
PRECISIONS = (
    "64",
    "64-true",
    "32",
    "32-true",
    "16",
    "16-mixed",
    "16-true",
    "bf16",
    "bf16-mixed",
    "bf16-true",
)
FUNCTIONAL = "(functional ops)"


def precision_bytes(precision: str) -> tuple[int, int]:
    """Bytes per activation value and per parameter for a Lightning precision string.

    Mixed precision (``16``, ``16-mixed``, ``bf16``, ``bf16-mixed``) keeps float32 parameters; ``-true``
    stores the parameters at the same width as the activations.

    Raises:
        ValueError: for a precision not in :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    kind, _, mode = precision.partition("-")
    act = _ACTIVATION_BYTES[kind]
    param = act if mode == "true" or kind in ("32", "64") else 4
    return act, param


@dataclass
class LayerInfo:
    """One call of a leaf module (or the functional ops between modules, on one row)."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    activations: int
    extra_bytes: int = 0
    inplace: bool = False


@dataclass
class ModelSummary:
    """Per-layer rows and totals of one forward pass; see the module docstring for the counting rules.

    ``activations`` are the layer outputs only; ``forward_values`` adds the input, as the lecture tables
    do. ``activation_bytes`` are the bytes of ``forward_values`` at the chosen precision plus integer
    outputs (pooling indices).
    """

    layers: list[LayerInfo]
    input_shape: tuple[int, ...]
    precision: str
    params: int
    trainable_params: int
    macs: int
    activations: int
    input_values: int
    activation_bytes: int
    param_bytes: int
    training_bytes_estimate: int
    bytes_per_value: int = field(default=4)

    @property
    def batch_size(self) -> int:
        return self.input_shape[0]

    @property
    def macs_per_sample(self) -> int:
        return self.macs // self.batch_size

    @property
    def forward_values(self) -> int:
        """Input plus layer-output values held in memory after the forward pass."""
        return self.input_values + self.activations

    @property
    def activations_per_sample(self) -> int:
        return self.forward_values // self.batch_size

    @property
    def output_bytes(self) -> int:
        """Bytes of the layer outputs alone (input excluded) at the chosen precision."""
        return self.activations * self.bytes_per_value


def layer_macs(module: nn.Module, inputs: Sequence[Any], output: torch.Tensor) -> int:
    """Multiply-adds of one call of ``module`` for the whole batch (0 for non-conv/linear layers)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        kernel = math.prod(module.kernel_size)
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _aliases(out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> bool:
    # Tensor._base (the viewed tensor) is the only way to tell an in-place or view output from a new one.
    base = out._base if out._base is not None else out
    for inp in inputs:
        inp_base = inp._base if inp._base is not None else inp
        if out is inp or base is inp_base:
            return True
        ptr = out.untyped_storage().data_ptr() if out.device.type != "meta" else 0
        if ptr != 0 and ptr == inp.untyped_storage().data_ptr():
            return True
    return False


def _tensors(obj: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(obj)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


class _FunctionalCounter(TorchDispatchMode):
    """Count new tensors made by aten ops that run outside every leaf module."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.values = 0
        self.extra_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.depth == 0:
            returns = func._schema.returns
            for i, tensor in enumerate(_tensors(out)):
                aliased = i < len(returns) and returns[i].alias_info is not None
                if aliased:
                    continue
                if tensor.is_floating_point():
                    self.values += tensor.numel()
                else:
                    self.extra_bytes += tensor.numel() * tensor.element_size()
        return out


def summarize(
    model: nn.Module,
    input_shape: tuple[int, ...],
    precision: str = "32",
    include_inplace: bool = False,
) -> ModelSummary:
    """Run one forward pass of zeros of ``input_shape`` (B, C, *spatial) and tabulate every leaf module.

    Args:
        model: any ``nn.Module`` taking one tensor; its parameters may live on the ``meta`` device.
        input_shape: full input shape including the batch, e.g. ``(4, 1, 512, 512)``.
        precision: Lightning precision string setting the bytes per value (see :func:`precision_bytes`).
        include_inplace: also count outputs that alias their input (in-place ReLU, views) as new values,
            as if every layer allocated its own output.

    Raises:
        ValueError: for an unknown ``precision`` or an empty or non-positive ``input_shape``.
    """
    bytes_per_value, bytes_per_param = precision_bytes(precision)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"input_shape must be (B, C, *spatial) with positive sizes, got {input_shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    names = {module: name for name, module in model.named_modules()}
    layers: list[LayerInfo] = []
    seen: set[int] = set()
    counter = _FunctionalCounter()

    def pre_hook(module: nn.Module, args: Any) -> None:
        counter.depth += 1

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        counter.depth -= 1
        if isinstance(module, nn.Identity):
            return
        inputs = _tensors(args)
        outputs = _tensors(output)
        first = id(module) not in seen
        seen.add(id(module))
        values = extra = 0
        inplace = False
        for out in outputs:
            if not include_inplace and _aliases(out, inputs):
                inplace = True
                continue
            if out.is_floating_point():
                values += out.numel()
            else:
                extra += out.numel() * out.element_size()
        main_out = outputs[0] if outputs else None
        layers.append(
            LayerInfo(
                name=names.get(module, "") or type(module).__name__,
                type=type(module).__name__,
                output_shape=tuple(main_out.shape) if main_out is not None else (),
                params=sum(p.numel() for p in module.parameters(recurse=False)) if first else 0,
                macs=layer_macs(module, inputs, main_out) if main_out is not None else 0,
                activations=values,
                extra_bytes=extra,
                inplace=inplace and values == 0,
            )
        )

    handles = []
    for module in model.modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(shape, device=device, dtype=dtype)
        with torch.no_grad(), counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    if counter.values or counter.extra_bytes:
        layers.append(LayerInfo(FUNCTIONAL, "functional", (), 0, 0, counter.values, counter.extra_bytes))

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    activations = sum(layer.activations for layer in layers)
    extra_bytes = sum(layer.extra_bytes for layer in layers)
    input_values = math.prod(shape)
    activation_bytes = (input_values + activations) * bytes_per_value + extra_bytes
    param_bytes = params * bytes_per_param
    trainable_bytes = trainable * bytes_per_param
    return ModelSummary(
        layers=layers,
        input_shape=shape,
        precision=precision,
        params=params,
        trainable_params=trainable,
        macs=sum(layer.macs for layer in layers),
        activations=activations,
        input_values=input_values,
        activation_bytes=activation_bytes,
        param_bytes=param_bytes,
        training_bytes_estimate=activation_bytes + param_bytes + 3 * trainable_bytes,
        bytes_per_value=bytes_per_value,
    )


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def render(summary: ModelSummary, console: Console | None = None) -> None:
    """Print the per-layer table and the totals of ``summary`` with Rich."""
    console = console or Console()
    rows = [
        (
            layer.name,
            layer.type,
            "x".join(map(str, layer.output_shape)),
            f"{layer.params:,}",
            _si(layer.macs),
            "in-place" if layer.inplace else f"{layer.activations:,}",
        )
        for layer in summary.layers
    ]
    footer = ("Total", "", "", f"{summary.params:,}", _si(summary.macs), f"{summary.activations:,}")
    widths = [max(len(row[i]) for row in [*rows, footer]) for i in range(len(footer))]
    table = Table(title=f"Layers for input {'x'.join(map(str, summary.input_shape))}", show_footer=True)
    table.add_column("Layer", footer=footer[0], overflow="fold")
    table.add_column("Type", overflow="fold")
    # numbers and shapes are never cut: the layer names fold instead when the console is narrow
    table.add_column("Output shape", no_wrap=True, min_width=widths[2])
    for title, i in (("Params", 3), ("MACs", 4), ("Activations", 5)):
        table.add_column(title, justify="right", footer=footer[i], no_wrap=True, min_width=widths[i])
    for row in rows:
        table.add_row(*row)
    console.print(table)

    totals = Table(title=f"Totals (precision {summary.precision})", show_header=False)
    totals.add_column("Quantity")
    totals.add_column("Value", justify="right")
    totals.add_row("Parameters (trainable)", f"{summary.params:,} ({summary.trainable_params:,})")
    totals.add_row("Parameter memory", _bytes(summary.param_bytes))
    totals.add_row("MACs, batch / per sample", f"{_si(summary.macs)} / {_si(summary.macs_per_sample)}")
    totals.add_row(
        "Forward values (input + outputs)",
        f"{summary.forward_values:,} ({summary.input_values:,} + {summary.activations:,})",
    )
    totals.add_row("Forward values per sample", f"{summary.activations_per_sample:,}")
    totals.add_row("Forward activation memory", _bytes(summary.activation_bytes))
    totals.add_row("Training estimate (acts + 4 x params, AdamW)", _bytes(summary.training_bytes_estimate))
    console.print(totals)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``"4x1x512x512"`` (or comma-separated) into a shape.

    Raises:
        ValueError: if a part is not a positive integer or fewer than three parts are given.
    """
    parts = [p for p in re.split(r"[x,\s]+", text.strip().lower()) if p]
    if len(parts) < 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--input must look like BxCxHxW or BxCxDxHxW with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)
