"""Choose connected-component post-processing on the validation cases after fit, store it with the model,
and switch its use at test and predict (nnU-Net's rule; the rule itself: segpipe.inference.postprocessing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from segpipe.inference.postprocessing import DEFAULT_MIN_SIZES, RuleEvidence, decision, option_names
from segpipe.io.atomic import write_text
from segpipe.io.checkpoints import AtomicCheckpointIO, safe_load
from segpipe.tasks.segmentation import POSTPROCESSING_KEY
from segpipe.tracking.logger import mlflow_logger

DECISION_FILE = "postprocessing.json"


class PostprocessingSelection(pl.Callback):
    """After fit: predict the validation cases with the best checkpoint, score every option of
    :func:`~segpipe.inference.postprocessing.option_names` per foreground class, keep an option only where it
    raises the class's mean validation Dice, and store the decision in the best checkpoint (re-saved
    atomically, entry ``postprocessing``) and beside it (``postprocessing.json``). The MLflow run gets the
    rule as params ``postprocessing/<class>`` and the mean foreground validation Dice as metrics
    ``postprocessing/val_dice_before`` and ``postprocessing/val_dice_after``.

    ``segpipe test`` and ``segpipe predict`` apply the rule stored in their checkpoint (test Dice is after
    post-processing); ``enabled: false`` neither chooses nor applies one.

    Args:
        enabled: choose a rule after fit and apply the stored one at test and predict.
        min_sizes: the ``min_size_<N>`` options tried: remove components smaller than N voxels.
    """

    def __init__(self, enabled: bool = True, min_sizes: list[int] | None = None) -> None:
        self.enabled = enabled
        self.min_sizes = list(DEFAULT_MIN_SIZES if min_sizes is None else min_sizes)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.apply_postprocessing = self.enabled

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.apply_postprocessing = self.enabled

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not self.enabled or not best or not trainer.is_global_zero:
            return
        if trainer.world_size > 1:
            rank_zero_warn("post-processing is chosen on one process only: run it with --trainer.devices 1")
            return
        checkpoint = safe_load(best)
        evidence = validation_evidence(trainer, pl_module, checkpoint["state_dict"], option_names(self.min_sizes))
        if not evidence.totals:
            return
        chosen = decision(evidence)
        store_decision(Path(best), checkpoint, chosen)
        pl_module.postprocessing = chosen
        self._log(trainer, pl_module, chosen, Path(best).with_name(DECISION_FILE))

    @staticmethod
    def _log(trainer: pl.Trainer, pl_module: pl.LightningModule, chosen: dict[str, Any], file: Path) -> None:
        names = pl_module.class_names
        rule = {f"postprocessing/{names[int(cls)]}": option for cls, option in chosen["rule"].items()}
        rank_zero_info(
            f"segpipe: post-processing {rule or 'none'}: validation Dice {chosen['val_dice_before']:.4f} -> "
            f"{chosen['val_dice_after']:.4f}"
        )
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        logger.log_hyperparams(rule or {"postprocessing": "none"})
        before, after = chosen["val_dice_before"], chosen["val_dice_after"]
        metrics = {"postprocessing/val_dice_before": before, "postprocessing/val_dice_after": after}
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.log_artifact(file)


def validation_evidence(
    trainer: pl.Trainer, pl_module: pl.LightningModule, state_dict: dict[str, Any], options: list[str]
) -> RuleEvidence:
    """Score ``options`` per foreground class on every validation case predicted with ``state_dict``.

    The task's weights are swapped for ``state_dict`` during the pass (on the Trainer's device) and put back
    after it, with the task on the device it was on. Predictions
    are the task's ``infer`` (validation's whole-input inference, one pass) argmax, as the test scores them.
    """
    loaders = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
    if loaders is None:
        return RuleEvidence()
    h = pl_module.hparams
    classes = [c for c in range(1, h.num_classes) if c != h.get("ignore_index")]
    current = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
    home, was_training = pl_module.device, pl_module.training  # after fit's teardown: the CPU
    device = trainer.strategy.root_device
    evidence = RuleEvidence()
    pl_module.load_state_dict(state_dict)
    pl_module.to(device).eval()
    try:
        with torch.no_grad():
            for batch in loaders:
                labels = pl_module.infer(batch["image"].to(device)).argmax(1).cpu().numpy()
                for prediction, target in zip(labels, batch["mask"].cpu().numpy(), strict=True):
                    evidence.add_case(prediction, target, classes, options, h.get("ignore_index"))
    finally:
        pl_module.load_state_dict(current)
        pl_module.to(home).train(was_training)
    return evidence


def store_decision(best: Path, checkpoint: dict[str, Any], chosen: dict[str, Any]) -> None:
    """Re-save checkpoint ``best`` with ``chosen`` as its ``postprocessing`` entry (atomically, as the
    Trainer writes it) and write the decision beside it as ``postprocessing.json``."""
    checkpoint[POSTPROCESSING_KEY] = chosen
    AtomicCheckpointIO().save_checkpoint(checkpoint, best)
    write_text(best.with_name(DECISION_FILE), json.dumps(chosen, indent=2) + "\n")
