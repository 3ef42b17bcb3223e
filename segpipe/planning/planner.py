"""``plan_experiment``: every decision of a training run, from a dataset fingerprint, each with its reason.

The rules are nnU-Net v2's (``ExperimentPlanner``: target spacing, per-axis pooling, patch size within a
memory budget, batch size at most 5% of the dataset), segpipe's memory model instead of nnU-Net's VRAM
proxy, and what short runs on the demo measured (docs/planning.md has each rule and its source).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from segpipe.errors import SegpipeError
from segpipe.models.registry import registered_name
from segpipe.planning.data_config import folder_data, normalization, volume_data, with_augmentation
from segpipe.planning.fingerprint import DatasetFingerprint
from segpipe.planning.memory import BUDGET_SHARE, device_memory_bytes, training_bytes
from segpipe.planning.networks import NetworkPlan, plan_network
from segpipe.planning.topology import (
    ANISOTROPY_THRESHOLD,
    CPU_MAX_POOLINGS,
    MAX_POOLINGS,
    MIN_FEATURE_MAP,
    fit_patch,
    resampled_shape,
    target_spacing,
)

Dims = Literal["auto", "2d", "3d", "slices"]
MAX_DATASET_SHARE = 0.05  # nnU-Net: a batch covers at most 5% of the dataset's voxels
MAX_BATCH = 64
TARGET_STEPS = 1000  # training steps of a run without a time budget
RARE_CLASS_FRACTION = 0.01  # a foreground class below 1% of the voxels gets a focal term


class PlanError(SegpipeError, ValueError):
    """A plan that cannot be made (unknown network, dims the data cannot have, no patch within the memory):
    one line for the user, and a ValueError for callers."""


@dataclass(frozen=True)
class ExperimentPlan:
    """``config``: a complete LightningCLI fit config as plain data (``segpipe fit --config`` runs it);
    ``reasons``: dotted key -> one-line reason; ``fingerprint``: what it was planned from."""

    config: dict[str, Any]
    reasons: dict[str, str]
    fingerprint: DatasetFingerprint


def resolve_dims(
    fingerprint: DatasetFingerprint, dims: Dims, shape: list[float], spacing: list[float]
) -> tuple[str, str]:
    """``2d`` (image folders), ``3d`` or ``slices`` (volumes), and why.

    Raises:
        PlanError: for ``3d``/``slices`` asked of 2D images.
    """
    if fingerprint.spatial_dims == 2:
        if dims in ("3d", "slices"):
            raise PlanError(f"dims {dims!r} needs volumes; {fingerprint.root} holds 2D images")
        return "2d", "2D images"
    if dims == "2d":
        dims = "slices"
    if dims != "auto":
        return dims, f"asked for {dims}"
    axis = slicing_axis(shape, spacing)
    if shape[axis] < 2 * MIN_FEATURE_MAP:
        return "slices", f"{shape[axis]:.0f} slices along axis {axis}: too few for one 3D pooling"
    return "3d", "volumes: 3D patches (nnU-Net's 3d_fullres)"


def slicing_axis(shape: list[float], spacing: list[float]) -> int:
    """The axis volumes are cut along for 2D slices: the coarse one of anisotropic data, else the shortest."""
    if max(spacing) > ANISOTROPY_THRESHOLD * min(spacing):
        return int(np.argmax(spacing))
    return int(np.argmin(shape))


def choose_loss(fingerprint: DatasetFingerprint) -> tuple[str, str]:
    """``dice_ce``, or ``dice_focal`` when a foreground class is rarer than :data:`RARE_CLASS_FRACTION`."""
    rarest = min(fingerprint.class_fraction[1:], default=1.0)
    if rarest < RARE_CLASS_FRACTION:
        return "dice_focal", f"a class covers {rarest:.2%} of voxels (< 1%): focal term for rare voxels (Lin 2017)"
    return "dice_ce", "Dice + cross-entropy (nnU-Net); every class covers >= 1% of voxels"


def plan_experiment(
    fingerprint: DatasetFingerprint,
    dims: Dims = "auto",
    network: str = "unet",
    device_memory: int | None = None,
) -> ExperimentPlan:
    """Decide the experiment for ``fingerprint``: dims, spacing, normalisation, patch, batch, network,
    augmentation, loss, optimiser, schedule, inference, precision and (without a budget) epochs.

    Args:
        fingerprint: the dataset's (:func:`segpipe.planning.dataset_fingerprint`).
        dims: ``auto``, ``2d``, ``3d`` or ``slices`` (a 2D network on slices of volumes).
        network: a registered architecture (``unet``, ``segnet``, ``fcn``, ``dense_unet``, ``encoder_unet``...).
        device_memory: bytes of the training device (None: this machine's, see
            :func:`segpipe.planning.memory.device_memory_bytes`).

    Raises:
        PlanError: for an unknown network (with the valid names), dims that do not fit the data, or no
            patch within the memory.
    """
    try:
        network = registered_name(network)
    except ValueError as err:
        raise PlanError(str(err)) from None
    reasons: dict[str, str] = {}
    cuda = torch.cuda.is_available()
    precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    reasons["trainer.precision"] = "bf16 mixed precision on CUDA" if cuda else "full precision on CPU"
    memory, source = (device_memory, "given") if device_memory is not None else device_memory_bytes()
    budget = int(memory * BUDGET_SHARE)

    spacing, reasons["data.init_args.spacing"] = target_spacing(fingerprint.spacings, fingerprint.shapes)
    shape = resampled_shape(fingerprint.shapes, fingerprint.spacings, spacing)
    chosen, dims_reason = resolve_dims(fingerprint, dims, shape, spacing)
    slice_axis = slicing_axis(shape, spacing) if chosen == "slices" else None
    if slice_axis is not None:
        reasons["data.init_args.training_mode"] = dims_reason
        shape = [s for axis, s in enumerate(shape) if axis != slice_axis]
    spatial_dims = 3 if chosen == "3d" else 2
    plane_spacing = spacing if chosen == "3d" else [s for a, s in enumerate(spacing) if a != slice_axis]
    width = 32 if cuda else 16  # nnU-Net's 32; 16 on CPU, where the demo U-Net reaches 0.96 at a third of the time

    def estimate(patch: list[int], levels: list[list[int]], batch: int) -> int:
        net = plan_network(network, spatial_dims, levels, width, cuda)
        args = (net.model, net.model_kwargs, fingerprint.in_channels, fingerprint.num_classes)
        return training_bytes(*args, (batch, *patch), precision)

    try:
        patch, levels = fit_patch(
            shape, plane_spacing, lambda p, lv: estimate(p, lv, 2) <= budget, MAX_POOLINGS if cuda else CPU_MAX_POOLINGS
        )
    except ValueError as err:
        raise PlanError(f"{err} ({memory / 2**30:.2f} GiB of {source} memory)") from None
    dataset_voxels = sum(math.prod(s) for s in fingerprint.shapes)
    cap = max(2, min(MAX_BATCH, int(MAX_DATASET_SHARE * dataset_voxels / math.prod(patch))))
    batch = 2
    while batch < cap and estimate(patch, levels, batch + 1) <= budget:
        batch += 1
    used = estimate(patch, levels, batch)
    net = plan_network(network, spatial_dims, levels, width, cuda)
    budget_text = f"{used / 2**30:.2f} of {budget / 2**30:.2f} GiB ({BUDGET_SHARE:.0%} of {source} memory)"
    reasons["data.init_args.patch_size"] = f"median case {[round(s) for s in shape]}, shrunk to fit {budget_text}"
    reasons["data.init_args.batch_size"] = (
        f"largest batch >= 2 within memory and 5% of the dataset's voxels (nnU-Net): {budget_text}"
    )
    reasons["model.model_kwargs.base_channels"] = (
        f"{width} channels at full resolution ({'nnU-Net' if cuda else 'CPU: demo-tuned'})"
    )
    reasons.update(net.reasons)

    if chosen == "2d":
        data = folder_data(fingerprint, patch, batch)
    else:
        data = volume_data(fingerprint, patch, batch, spacing, slice_axis)
    reasons["data.init_args.normalization"] = normalization(fingerprint)[1]
    loss, reasons["model.loss"] = choose_loss(fingerprint)
    steps_per_epoch = max(1, math.ceil(len(fingerprint.case_names) / batch))
    epochs = max(10, min(1000, math.ceil(TARGET_STEPS / steps_per_epoch)))
    reasons["trainer.max_epochs"] = f"no time budget: about {TARGET_STEPS} training steps ({steps_per_epoch} per epoch)"
    model = model_section(fingerprint, net, spatial_dims, loss, patch if chosen == "3d" else None, slice_axis)
    reasons["model.optimizer"] = "AdamW with a cosine schedule to the end of the run: fastest on short runs (demo)"
    config = {
        "seed_everything": 0,
        "trainer": trainer_section(fingerprint, epochs, precision, steps_per_epoch),
        "model": model,
        "data": data,
    }
    config, augmentation_reasons = with_augmentation(config, fingerprint, epochs)
    return ExperimentPlan(config, {**reasons, **augmentation_reasons}, fingerprint)


def model_section(
    fingerprint: DatasetFingerprint,
    net: NetworkPlan,
    spatial_dims: int,
    loss: str,
    window: list[int] | None,
    slice_axis: int | None,
) -> dict[str, Any]:
    """The ``model:`` section (SegmentationTask's arguments)."""
    section: dict[str, Any] = {
        "model": net.model,
        "spatial_dims": spatial_dims,
        "in_channels": fingerprint.in_channels,
        "num_classes": fingerprint.num_classes,
        "class_names": list(fingerprint.class_names),
        "model_kwargs": net.model_kwargs,
        "loss": loss,
        "optimizer": net.optimizer,
        "lr_scheduler": net.lr_scheduler,
        "inference_roi": window,
        "inference_overlap": 0.5,
        "tta": True,
    }
    if slice_axis is not None:
        section["slice_axis"] = slice_axis
    return section


def trainer_section(
    fingerprint: DatasetFingerprint, epochs: int, precision: str, steps_per_epoch: int
) -> dict[str, Any]:
    """The ``trainer:`` section: one device picked by Lightning, MLflow logging under the dataset's name."""
    name = fingerprint.root.rstrip("/").split("/")[-1] or "dataset"
    return {
        "accelerator": "auto",
        "devices": 1,
        "precision": precision,
        "max_epochs": epochs,
        "log_every_n_steps": min(5, steps_per_epoch),
        "enable_model_summary": False,
        "logger": {"class_path": "segpipe.tracking.MLflowLogger", "init_args": {"experiment_name": f"segpipe-{name}"}},
    }
