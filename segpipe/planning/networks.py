"""What each architecture needs in a plan (``segpipe plan --network NAME``): its ``model_kwargs`` from the
planned depth, pooling and width, and its optimiser and schedule.

The U-Net settings are those the 2D demo was tuned to by hand (AdamW, lr 3e-3, cosine to the end of
the run: Dice 0.96). The VGG-based and dense networks get batch norm, no dropout and AdamW at lr 1e-3,
the usual settings for training them from scratch; their learning rates are not tuned on the demo (each
network's zero-config demo result at 3 minutes: docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from segpipe.models.registry import model_options, registered_name

VGG_STAGE_CONVS = (2, 2, 3, 3, 3)  # SegNet's and FCN's VGG16 stages
DENSE_DOWN_BLOCKS = (4, 5, 7, 10, 12)  # FC-DenseNet103's dense blocks
DENSE_BOTTLENECK_LAYERS = 15  # and its bottleneck block
# On a CPU, 2 layers per dense block: FC-DenseNet103's blocks (4, 5, 7, 10 + 15 at the bottleneck) take 5.3 s
# per step of 3 demo slices (2 threads), 2-layer blocks 0.73 s (a 4-pooling U-Net of width 16: 0.38 s)
CPU_DENSE_LAYERS = 2
COSINE = {"class_path": "segpipe.tasks.schedules.CosineToEnd"}


@dataclass(frozen=True)
class NetworkPlan:
    """An architecture's settings: ``model`` (registry name), ``model_kwargs``, ``optimizer`` and
    ``lr_scheduler`` (class_path/init_args), and a reason per ``model.*`` key."""

    model: str
    model_kwargs: dict[str, Any]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any] = field(default_factory=lambda: dict(COSINE))
    reasons: dict[str, str] = field(default_factory=dict)


def adamw(lr: float, weight_decay: float = 1e-4) -> dict[str, Any]:
    return {"class_path": "torch.optim.AdamW", "init_args": {"lr": lr, "weight_decay": weight_decay}}


def plan_network(
    name: str, spatial_dims: int, levels: Sequence[Sequence[int]], width: int, gpu: bool = True
) -> NetworkPlan:
    """The settings of architecture ``name`` for a network with ``len(levels)`` poolings (per-axis factors
    ``levels``) and ``width`` channels at full resolution, to train on a GPU (``gpu``) or on the CPU.

    Raises:
        ValueError: for an unknown architecture (the message lists the registered ones).
    """
    model = registered_name(name)
    depth = len(levels)
    norm = "batch" if spatial_dims == 2 else "instance"  # nnU-Net's instance norm in 3D: batches of 2 patches
    norm_reason = "batch norm in 2D (demo-tuned); instance norm in 3D (nnU-Net: batches are small)"
    if model == "unet":
        kwargs: dict[str, Any] = {
            "depth": depth,
            "base_channels": width,
            "norm": norm,
            # 3D transposed convolutions are ~3x slower on CPU than interpolation (configs/unet3d.yaml)
            "upsample": "transpose" if spatial_dims == 2 else "interp",
        }
        reasons = {
            "model.model_kwargs.depth": f"{depth} poolings: every axis keeps >= 4 voxels (nnU-Net); at most 5, 4 on CPU"
        }
        if any(1 in level for level in levels):
            kwargs["pool_sizes"] = [list(level) for level in levels]
            reasons["model.model_kwargs.pool_sizes"] = "anisotropic spacing: coarse axis pooled later (nnU-Net)"
        return NetworkPlan(model, kwargs, adamw(3e-3), reasons={**reasons, "model.model_kwargs.norm": norm_reason})
    if model == "segnet":
        stages = list(VGG_STAGE_CONVS[: max(depth, 1)])
        kwargs = {"base_channels": width, "stage_convs": stages, "norm": "batch" if spatial_dims == 2 else norm}
        reasons = {"model.model_kwargs.stage_convs": f"VGG16 stages, one per pooling ({len(stages)})"}
        return NetworkPlan(model, kwargs, adamw(1e-3), reasons=reasons)
    if model in ("fcn", "fcn8s", "fcn16s", "fcn32s"):
        # the VGG backbone always pools 5 times; fc layers as 3x3 convolutions suit the small 1/32 map
        kwargs = {"base_channels": width, "fc_channels": 8 * width, "fc_kernel": 3, "dropout": 0.0, "norm": "batch"}
        reasons = {"model.model_kwargs.norm": "batch norm: narrow VGGs do not train from scratch without it"}
        return NetworkPlan(model, kwargs, adamw(1e-3), reasons=reasons)
    if model == "dense_unet":
        poolings = max(depth, 1)
        if gpu:
            blocks, bottleneck = list(DENSE_DOWN_BLOCKS[:poolings]), DENSE_BOTTLENECK_LAYERS
            blocks_reason = f"FC-DenseNet103's blocks, one per pooling ({poolings})"
        else:
            blocks, bottleneck = [CPU_DENSE_LAYERS] * poolings, CPU_DENSE_LAYERS
            blocks_reason = f"CPU: {CPU_DENSE_LAYERS} layers per dense block and pooling (FC-DenseNet103's: 7x slower)"
        kwargs = {
            "down_blocks": blocks,
            "bottleneck_layers": bottleneck,
            "growth_rate": max(width // 2, 4),
            "init_features": 3 * width if gpu else width,
            "dropout": 0.0,
            "norm": norm,
        }
        reasons = {"model.model_kwargs.down_blocks": blocks_reason}
        return NetworkPlan(model, kwargs, adamw(1e-3), reasons=reasons)
    if model == "encoder_unet":
        kwargs = {"encoder_depth": min(depth, 5)}
        return NetworkPlan(
            model, kwargs, adamw(1e-3), reasons={"model.model_kwargs.encoder_depth": "one stage per pooling"}
        )
    # Every other registered architecture (fixed variants such as fc_densenet103, encoder_fcn): its
    # defaults, with the normalisation of the run where it takes one.
    kwargs = {"norm": norm} if "norm" in model_options(model) else {}
    return NetworkPlan(model, kwargs, adamw(1e-3), reasons={"model.model_kwargs": f"{model}'s own defaults"})
