"""Fold ensembles: several checkpoints' networks as one task whose class probabilities are their mean.

Each member runs the same whole-input inference (sliding window, flip TTA: the settings of the config
the ensemble is used with) and the softmax probabilities, each already averaged over its TTA flips, are
averaged over the members on the preprocessed grid; the prediction writer then maps them to each
input's grid as for one model. Members may differ in architecture but must agree on what they read and
predict: classes, channels, spatial dimensions, class names and preprocessing (the DataModule's
hyperparameters stored in each checkpoint, less the split, loader and sampling settings that folds
legitimately differ in).

Post-processing: each member's checkpoint stores the evidence its rule was chosen on (its fold's
validation cases); the ensemble's rule is chosen on that evidence pooled over the members, i.e. on all
the folds' validation cases, as nnU-Net chooses it on the cross-validation. Without evidence in every
member the ensemble applies none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from segpipe.errors import CheckpointError
from segpipe.inference.postprocessing import RuleEvidence, decision, pool_evidence
from segpipe.io.checkpoints import safe_load
from segpipe.models import build_model
from segpipe.tasks.segmentation import POSTPROCESSING_KEY, SegmentationTask

MODEL_KEYS = ("num_classes", "in_channels", "spatial_dims", "class_names")
DATA_KEY = "datamodule_hyper_parameters"
# DataModule settings that choose cases, load and sample them, or augment training: folds differ in them
# (or may), and none changes how an input is preprocessed for the network.
NOT_PREPROCESSING = frozenset(
    {
        "root", "layout", "list_file", "images_dir", "masks_dir", "val_fraction", "test_fraction", "split_seed",
        "fold", "num_folds", "split_file", "patch_size", "samples_per_volume", "foreground_fraction",
        "batch_size", "eval_batch_size", "num_workers", "pin_memory", "cache", "cache_dir", "train_transforms",
        "training_mode", "predict_dir",
    }
)  # fmt: skip
LOG_FLOOR = 1e-8  # log of probabilities that underflow to 0: finite logits for the loss


class EnsembleTask(SegmentationTask):
    """A :class:`SegmentationTask` whose networks are ``members`` (the first is ``net``).

    :meth:`predict_probabilities` is the members' mean of :class:`~segpipe.inference.WindowedInference`
    probabilities (each with the ``tta`` flips); :meth:`infer` (validation and test, one pass) returns the
    log of the members' mean probabilities: logits whose softmax is that mean and whose argmax is the
    ensemble's label, so the test loss is the cross-entropy of the averaged probabilities.
    Build it with :func:`build_ensemble`.
    """

    def configure_models(self) -> None:
        super().configure_models()
        self.members = nn.ModuleList([self.net])

    def add_member(self, net: nn.Module) -> None:
        """Add a network (B, C, *spatial) -> logits (B, K, *spatial) of the same classes."""
        self.members.append(net)

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Log of the members' mean softmax probabilities (B, K, *spatial), used as logits."""
        total = sum(self.inference.logits(net, image).softmax(1) for net in self.members)
        return (total / len(self.members)).clamp_min(LOG_FLOOR).log()

    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Members' mean class probabilities (B, K, *spatial), each member averaged over the ``tta`` flips."""
        total = sum(self.inference.probabilities(net, image, self.tta_axes) for net in self.members)
        return total / len(self.members)


def build_ensemble(paths: Sequence[str | Path], inference: Mapping[str, Any]) -> EnsembleTask:
    """An :class:`EnsembleTask` of the checkpoints ``paths``, run with the ``inference`` settings.

    Args:
        paths: two or more checkpoint files of :class:`SegmentationTask` runs (one is allowed too).
        inference: task hyperparameters of the run's config that override the members' (``inference_*``,
            ``tta``, ``slice_axis``).

    Raises:
        CheckpointError: a file is unsafe or unreadable, or two members disagree (one line naming both
            files and the difference).
    """
    checkpoints = [safe_load(path) for path in paths]
    check_members(paths, checkpoints)
    task = EnsembleTask(**{**task_hyperparameters(checkpoints[0]), **inference})
    task.net.load_state_dict(network_state(checkpoints[0]))
    for checkpoint in checkpoints[1:]:
        h = task_hyperparameters(checkpoint)
        options = h.get("model_kwargs") or {}
        net = build_model(h["model"], h["spatial_dims"], h["in_channels"], h["num_classes"], **options)
        net.load_state_dict(network_state(checkpoint))
        task.add_member(net)
    task.postprocessing = pooled_postprocessing(paths, checkpoints)
    return task.eval()


def task_hyperparameters(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The task's constructor arguments stored in ``checkpoint`` (LightningCLI's private entries dropped)."""
    stored = checkpoint.get("hyper_parameters") or {}
    return {key: value for key, value in stored.items() if not str(key).startswith("_")}


def network_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights (``net.*`` of the task's state dict, prefix removed)."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def preprocessing_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The stored DataModule hyperparameters that decide how an input is preprocessed."""
    stored = checkpoint.get(DATA_KEY) or {}
    return {k: v for k, v in stored.items() if k not in NOT_PREPROCESSING and not str(k).startswith("_")}


def check_members(paths: Sequence[str | Path], checkpoints: Sequence[dict[str, Any]]) -> None:
    """Refuse members that disagree with the first on classes, channels, dimensions, class names or
    preprocessing.

    Raises:
        CheckpointError: ``ensemble: <first> and <other> disagree on <key>: <a> vs <b>``.
    """
    if not checkpoints:
        raise CheckpointError("ensemble: no checkpoints given")
    first = checkpoints[0]
    for path, checkpoint in zip(paths[1:], checkpoints[1:], strict=True):
        pairs = [(task_hyperparameters(first), task_hyperparameters(checkpoint), MODEL_KEYS, "")]
        data_a, data_b = preprocessing_settings(first), preprocessing_settings(checkpoint)
        pairs.append((data_a, data_b, sorted(set(data_a) | set(data_b)), "preprocessing "))
        for a, b, keys, what in pairs:
            for key in keys:
                if a.get(key) != b.get(key):
                    raise CheckpointError(
                        f"ensemble: {paths[0]} and {path} disagree on {what}{key}: {a.get(key)!r} vs {b.get(key)!r}"
                    )


def pooled_postprocessing(paths: Sequence[str | Path], checkpoints: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The post-processing decision chosen on the members' validation evidence pooled; None (warned) when a
    member has none.

    Raises:
        CheckpointError: when members scored different classes or options.
    """
    stored = [checkpoint.get(POSTPROCESSING_KEY) for checkpoint in checkpoints]
    missing = [str(path) for path, entry in zip(paths, stored, strict=True) if not (entry or {}).get("evidence")]
    if missing:
        if len(missing) < len(paths):
            rank_zero_warn(f"ensemble: no post-processing: {', '.join(missing)} store(s) no validation evidence")
        return None
    try:
        return decision(pool_evidence(RuleEvidence.from_dict(entry["evidence"]) for entry in stored))
    except ValueError as err:
        raise CheckpointError(f"ensemble: {', '.join(map(str, paths))}: {err}") from None
