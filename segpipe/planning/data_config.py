"""The ``data:`` section of a plan: the DataModule that reads the fingerprinted dataset, with the planned
patch, batch, normalisation and augmentation."""

from __future__ import annotations

import os
from typing import Any

from segpipe.planning.augmentation import (
    CROP_TRANSFORMS,
    augmentation_2d,
    augmentation_3d,
    augmentation_reason,
    full_augmentation,
    mirrored_axes,
)
from segpipe.planning.fingerprint import DatasetFingerprint

CT_PERCENTILES = [0.5, 99.5]


def loader_workers() -> int:
    """DataLoader workers: one core left to the training process, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def normalization(fingerprint: DatasetFingerprint) -> tuple[dict[str, Any], str]:
    """The intensity normalisation arguments of the DataModule, and why."""
    if fingerprint.layout == "folder":
        if fingerprint.shared_intensity_scale:
            spread = max(fingerprint.foreground_mean_spread)
            return {"normalization": "dataset"}, (
                f"images share one intensity scale (foreground means vary by {spread:.0%}): z-score with the "
                "training pixels' mean/std, computed at setup"
            )
        return {"normalization": "zscore"}, "images differ in intensity scale: z-score per image"
    if fingerprint.modality is not None and any(m.upper() == "CT" for m in fingerprint.modality):
        arguments = {"normalization": "ct", "ct_percentiles": CT_PERCENTILES, "ct_statistics": "dataset"}
        return arguments, "CT (dataset.json): clip to the foreground's 0.5/99.5 percentiles, z-score (nnU-Net)"
    if fingerprint.shared_intensity_scale:
        # Per-case z-scores map one tissue to different values when cases are parts of one scan or share a
        # protocol (the demo's per-slice z-scores capped its Dice at 0.83-0.86, docs/benchmarks.md).
        spread = max(fingerprint.foreground_mean_spread)
        arguments = {"normalization": "ct", "ct_percentiles": CT_PERCENTILES, "ct_statistics": "dataset"}
        return arguments, (
            f"cases share one intensity scale (foreground means vary by {spread:.0%}): clip to the training "
            "foreground's 0.5/99.5 percentiles, z-score with its mean/std (nnU-Net's CT scheme), not per case"
        )
    return {"normalization": "zscore"}, "not CT, scales differ between cases: z-score per volume (nnU-Net's MR scheme)"


def folder_data(fingerprint: DatasetFingerprint, patch: list[int], batch_size: int) -> dict[str, Any]:
    """``FolderDataModule`` init_args; images larger than ``patch`` (or of several sizes) are cropped to it
    (augmentation: :func:`with_augmentation`)."""
    arguments, _ = normalization(fingerprint)
    transforms: list[dict[str, Any]] = []
    same_size = all(shape == fingerprint.shapes[0] for shape in fingerprint.shapes)
    crop = not same_size or any(s > p for s, p in zip(fingerprint.shapes[0], patch, strict=True))
    if crop:
        height, width = patch
        transforms = [
            {"name": "PadIfNeeded", "min_height": height, "min_width": width, "border_mode": 0},
            {"name": "RandomCrop", "height": height, "width": width},
        ]
    init_args: dict[str, Any] = {
        "root": fingerprint.root,
        "batch_size": batch_size,
        "num_workers": loader_workers(),
        **arguments,
        "train_transforms": transforms,
    }
    if not same_size:
        init_args["eval_batch_size"] = 1
    return {"class_path": "segpipe.data.FolderDataModule", "init_args": init_args}


def volume_data(
    fingerprint: DatasetFingerprint,
    patch: list[int],
    batch_size: int,
    spacing: list[float],
    slice_axis: int | None,
) -> dict[str, Any]:
    """``VolumeDataModule`` init_args: 3D patches, or 2D slices along ``slice_axis`` (augmentation:
    :func:`with_augmentation`)."""
    arguments, _ = normalization(fingerprint)
    init_args: dict[str, Any] = {
        "root": fingerprint.root,
        "layout": fingerprint.layout,
        "patch_size": patch,
        "batch_size": batch_size,
        "samples_per_volume": 1,
        "foreground_fraction": 0.33,
        "spacing": spacing,
        **arguments,
        "cache": "disk",
        "num_workers": loader_workers(),
    }
    if slice_axis is not None:
        init_args.update(training_mode="slices", slice_axis=slice_axis)
    return {"class_path": "segpipe.data.VolumeDataModule", "init_args": init_args}


def with_augmentation(
    config: dict[str, Any], fingerprint: DatasetFingerprint, epochs: float
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of the plan ``config`` with its training augmentation and test-time mirroring for a run of
    ``epochs`` passes over the training set (see :mod:`segpipe.planning.augmentation`), and the reasons.

    Mirroring is planned on the axes where the dataset is symmetric; TTA mirrors the same axes (for 2D slices
    of volumes, their in-plane axes, numbered within the slice).
    """
    data_args = dict(config["data"]["init_args"])
    full = full_augmentation(epochs)
    mirror = mirrored_axes(fingerprint.mirror_symmetry)
    reason = augmentation_reason(mirror, fingerprint.mirror_symmetry, epochs, full)
    if fingerprint.spatial_dims == 2:
        crop = [t for t in data_args.get("train_transforms") or [] if t["name"] in CROP_TRANSFORMS]
        data_args["train_transforms"] = crop + augmentation_2d(mirror, full)
        key, tta = "data.init_args.train_transforms", mirror
    else:
        spacing = data_args["spacing"]
        coarse = max(range(3), key=lambda axis: spacing[axis])
        rotation = [coarse] if fingerprint.anisotropy > 3 else [0, 1, 2]
        data_args["augmentation"] = augmentation_3d(rotation, mirror, full)
        key, tta = "data.init_args.augmentation", mirror
        if data_args.get("training_mode") == "slices":
            in_plane = [axis for axis in range(3) if axis != data_args["slice_axis"]]
            tta = [in_plane.index(axis) for axis in mirror if axis in in_plane]
    model = {**config["model"], "tta": tta or False}
    data = {**config["data"], "init_args": data_args}
    reasons = {key: reason, "model.tta": f"mirroring test-time augmentation of the trained axes {tta} (nnU-Net)"}
    if not tta:
        reasons["model.tta"] = "no test-time mirroring: no axis is mirrored in training"
    return {**config, "model": model, "data": data}, reasons
