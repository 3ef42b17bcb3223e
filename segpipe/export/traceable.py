"""Make segpipe's networks traceable for any input size, or say why one is exported at a fixed size.

Tracing (``torch.jit.trace``) and ``torch.export`` record tensor operations, so shape arithmetic done
with tensor sizes follows the input; a Python ``if`` on a size is frozen at the traced input. Per
architecture (checked by ``tests/test_export.py`` at the traced size and at larger, odd, unequal sizes):

* **U-Net, padded**, **FCN** and the encoder networks (:class:`segpipe.models.base.StridedNet`) zero-pad
  the input at the end to a multiple of their total stride with amounts computed from the input size and
  no size-dependent branch (:func:`segpipe.models.base.pad_to_stride`), so they trace as they are.
* **SegNet**'s unpooling passes the pre-pooling size to ``F.max_unpool*d``, whose Python range checks
  reject traced sizes; :class:`TraceableMaxUnpool` calls the same ATen operator without them.
* **Dense-UNet** traces as it is (ceil-mode pooling, crops to the skip's traced size).
* **U-Net, unpadded** (``padded=False``) mirror-pads every input by an amount found by a Python search
  over valid sizes (:meth:`UNet.valid_input_size`); no graph repeats it, so it is exported for one
  spatial size (the batch stays dynamic).

Any other network is exported as it is; the exporter's check at a second input size decides.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from segpipe.models import DenseUNet, SegNet, UNet
from segpipe.models.base import StridedNet


class TraceableMaxUnpool(nn.Module):
    """Drop-in for ``nn.MaxUnpool2d``/``3d`` whose ``output_size`` may be traced sizes.

    ``forward(x, indices, output_size)`` writes x (B, C, *s) at ``indices`` into zeros (B, C, *S), S being
    the last ``spatial_dims`` entries of ``output_size`` (or the default unpooled size when it is None).
    """

    def __init__(self, unpool: nn.MaxUnpool2d | nn.MaxUnpool3d) -> None:
        super().__init__()
        self.spatial_dims = 3 if isinstance(unpool, nn.MaxUnpool3d) else 2
        self.kernel_size = _tuple(unpool.kernel_size, self.spatial_dims)
        self.stride = _tuple(unpool.stride, self.spatial_dims)
        self.padding = _tuple(unpool.padding, self.spatial_dims)

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, output_size: list[int] | tuple[int, ...] | None = None
    ) -> torch.Tensor:
        if output_size is None:
            size = [
                (x.shape[2 + d] - 1) * self.stride[d] - 2 * self.padding[d] + self.kernel_size[d]
                for d in range(self.spatial_dims)
            ]
        else:
            size = list(output_size)[-self.spatial_dims :]
        # The ATen binding F.max_unpool*d ends in, minus its Python range checks. (torch.ops.aten.* would
        # turn traced sizes into constants.)
        if self.spatial_dims == 2:
            return torch._C._nn.max_unpool2d(x, indices, size)
        return torch._C._nn.max_unpool3d(x, indices, size, self.stride, self.padding)


def _tuple(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value),) * n


@dataclass(frozen=True)
class ExportPlan:
    """What to trace and how its spatial size behaves once exported.

    ``module`` computes the same logits as the network; ``dynamic_spatial`` is False when the export is
    valid for the traced spatial size only, ``note`` says why in one sentence.
    """

    module: nn.Module
    dynamic_spatial: bool
    note: str


def plan_export(net: nn.Module, fixed_size: bool = False) -> ExportPlan:
    """Wrap a copy of ``net`` (eval mode) so that its shape logic survives tracing; see the module docs.

    Args:
        net: a segpipe network (or any ``nn.Module`` taking (B, C, *S) and returning logits).
        fixed_size: export for the traced spatial size only, whatever the architecture allows.
    """
    module = _with_traceable_unpooling(copy.deepcopy(net))
    if isinstance(net, UNet) and not net.padded:
        return ExportPlan(
            module.eval(),
            False,
            "U-Net with padded=false mirror-pads each input by an amount found by a Python search over "
            "valid sizes, which an exported graph cannot repeat; the spatial size is fixed",
        )
    if isinstance(net, StridedNet):
        note = f"padded to a multiple of {net.stride} in-graph"
    elif isinstance(net, DenseUNet | SegNet):
        note = "any size (ceil-mode pooling, sizes follow the input)"
    else:
        note = "exported as is; checked at a second input size"
    if fixed_size:
        return ExportPlan(module.eval(), False, "the spatial size is fixed, as requested (--fixed-size)")
    return ExportPlan(module.eval(), True, note)


def _with_traceable_unpooling(net: nn.Module) -> nn.Module:
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxUnpool2d | nn.MaxUnpool3d):
                setattr(parent, name, TraceableMaxUnpool(child))
    return net
