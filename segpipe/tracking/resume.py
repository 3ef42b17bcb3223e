"""Resume into the same MLflow run: the run id travels inside every checkpoint.

``RunIdInCheckpoint`` writes ``checkpoint["mlflow"] = {"run_id", "experiment_id", "tracking_uri"}``;
``segpipe fit --ckpt_path <ckpt>`` reads it back (:func:`resumable_run_id`) before the trainer and its
logger exist and hands it to the logger, so metrics continue in the same run at the checkpoint's step,
also after the process was killed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from mlflow import MlflowClient

from segpipe.tracking.logger import mlflow_logger

CHECKPOINT_KEY = "mlflow"


class RunIdInCheckpoint(Callback):
    """Store the MLflow run id (and where the run lives) in every checkpoint the trainer writes."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        logger = mlflow_logger(trainer)
        if logger is not None and logger._initialized:
            checkpoint[CHECKPOINT_KEY] = {
                "run_id": logger.run_id,
                "experiment_id": logger.experiment_id,
                "tracking_uri": logger._tracking_uri,
            }


def run_info_from_checkpoint(path: str | Path) -> dict[str, str] | None:
    """The ``mlflow`` entry of a checkpoint file (None if absent); only tensors and plain types are loaded."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    info = checkpoint.get(CHECKPOINT_KEY)
    return dict(info) if isinstance(info, dict) and info.get("run_id") else None


def resumable_run_id(path: str | Path, tracking_uri: str) -> str | None:
    """The run id stored in checkpoint ``path`` if that run exists in ``tracking_uri``, else None (warned)."""
    info = run_info_from_checkpoint(path)
    if info is None:
        return None
    try:
        MlflowClient(tracking_uri).get_run(info["run_id"])
    except Exception as err:
        rank_zero_warn(
            f"checkpoint {path} belongs to MLflow run {info['run_id']} in {info.get('tracking_uri')}, which "
            f"{tracking_uri} cannot open ({type(err).__name__}); the resumed training is logged to a new run."
        )
        return None
    return info["run_id"]
