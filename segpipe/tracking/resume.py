"""Resume into the same MLflow run: the run id travels inside every checkpoint.

``RunIdInCheckpoint`` writes ``checkpoint["mlflow"] = {"run_id", "experiment_id", "tracking_uri"}``;
``segpipe fit --ckpt_path <ckpt>`` reads it back (:func:`resumable_run_id`) before the trainer and its
logger exist and hands it to the logger, so metrics continue in the same run at the checkpoint's step,
also after the process was killed.

``--ckpt_path last`` names the most recently written ``last.ckpt`` of the configured experiment
(:func:`last_checkpoint_of_experiment`), or ``<checkpoint.dirpath>/last.ckpt`` when a fixed folder is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from segpipe.errors import SegpipeError
from segpipe.io.checkpoints import safe_load
from segpipe.tracking.logger import mlflow_logger

CHECKPOINT_KEY = "mlflow"
LAST_FILE = "last.ckpt"


class RunIdInCheckpoint(Callback):
    """Store the MLflow run id (and where the run lives) in every checkpoint the trainer writes."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        logger = mlflow_logger(trainer)
        if logger is not None and logger.started:
            checkpoint[CHECKPOINT_KEY] = {
                "run_id": logger.run_id,
                "experiment_id": logger.experiment_id,
                "tracking_uri": logger.tracking_uri,
            }


def run_info_from_checkpoint(path: str | Path) -> dict[str, str] | None:
    """The ``mlflow`` entry of a checkpoint file (None if absent); only tensors and plain types are loaded.

    Raises:
        CheckpointError: the file is missing, unreadable or holds pickled objects.
    """
    checkpoint = safe_load(path)
    info = checkpoint.get(CHECKPOINT_KEY)
    return dict(info) if isinstance(info, dict) and info.get("run_id") else None


def resumable_run_id(path: str | Path, tracking_uri: str) -> str | None:
    """The run id stored in checkpoint ``path`` if that run exists in ``tracking_uri``, else None (warned)."""
    from mlflow import MlflowClient  # imported here: only a resumed fit or test needs it

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


def last_checkpoint_of_experiment(
    root: str | Path, experiment_name: str, tracking_uri: str, required: bool = False
) -> str | None:
    """The newest ``<root>/<experiment id>/<run id>/checkpoints/last.ckpt`` of an MLflow experiment, or None.

    segpipe writes each run's checkpoints there; the newest file (by modification time) belongs to the run
    that trained last, killed or not. None (warned: a fit starts afresh) when the experiment has none.

    Raises:
        SegpipeError: the tracking store cannot be read, or no checkpoint exists and one is ``required``.
    """
    from mlflow import MlflowClient  # imported here: only --ckpt_path last needs it

    try:
        experiment = MlflowClient(tracking_uri).get_experiment_by_name(experiment_name)
    except Exception as err:  # MLflow raises MlflowException, requests and sqlalchemy errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SegpipeError(
            f"--ckpt_path last: cannot read experiment {experiment_name!r} at {tracking_uri}: {first}"
        ) from None
    pattern = f"{experiment.experiment_id if experiment else '<id>'}/*/checkpoints/{LAST_FILE}"
    found = [path for path in Path(root).glob(pattern) if path.is_file()] if experiment else []
    newest = max(found, key=lambda path: path.stat().st_mtime_ns, default=None)
    return _resolved(newest, f"{Path(root) / pattern} (experiment {experiment_name!r})", required)


def last_checkpoint_in(folder: str | Path, required: bool = False) -> str | None:
    """``<folder>/last.ckpt`` if it exists, else None (warned), or SegpipeError when one is ``required``."""
    path = Path(folder) / LAST_FILE
    return _resolved(path if path.is_file() else None, str(path), required)


def _resolved(path: Path | None, where: str, required: bool) -> str | None:
    if path is None and required:
        raise SegpipeError(f"--ckpt_path last: no checkpoint at {where}")
    if path is None:
        rank_zero_warn(f"--ckpt_path last: no checkpoint at {where}; training starts from scratch")
        return None
    rank_zero_info(f"segpipe: --ckpt_path last is {path}")
    return str(path)
