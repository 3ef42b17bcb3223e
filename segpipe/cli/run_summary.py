"""The lines printed when ``segpipe fit`` or ``segpipe test`` ends: what came out and where it is.

segpipe: best val/dice 0.8093 at epoch 1
segpipe: test/dice_pooled 0.7836 (all test pixels pooled)
segpipe: checkpoint outputs/1/<run id>/checkpoints/best-epoch001-dice0.8093.ckpt
segpipe: MLflow run <run id> in experiment segpipe-demo
segpipe: open it with: mlflow ui --backend-store-uri sqlite:////abs/path/mlflow.db
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger

from segpipe.errors import CheckpointError
from segpipe.io.checkpoints import safe_load

# The test Dice over all pixels of the split, by the name it has in each segpipe version (newest first).
TEST_DICE_KEYS = ("test/dice_pooled", "test/dice")


def summary_lines(trainer: Trainer, checkpoint: str | None = None) -> list[str]:
    """The end-of-run summary of ``trainer``'s last fit and/or test, one fact a line.

    Args:
        trainer: the trainer after ``fit`` and/or ``test``.
        checkpoint: the checkpoint a ``segpipe test`` evaluated; None after ``fit`` (its best checkpoint).

    Returns:
        Lines without a trailing newline; a fact the run does not have (no test split, no MLflow logger)
        has no line.
    """
    lines = []
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or ""
    score = getattr(callback, "best_model_score", None)
    if checkpoint is None and best and score is not None:
        epoch = checkpoint_epoch(best)
        at_epoch = f" at epoch {epoch}" if epoch is not None else ""
        lines.append(f"best {callback.monitor} {float(score):.4f}{at_epoch}")
    metrics = trainer.callback_metrics
    test_key = next((key for key in TEST_DICE_KEYS if key in metrics), None)
    if test_key is not None:
        lines.append(f"{test_key} {float(metrics[test_key]):.4f} (all test pixels pooled)")
    if checkpoint or best:
        lines.append(f"checkpoint {checkpoint or best}")
    logger = trainer.logger
    if isinstance(logger, MLFlowLogger) and logger.run_id:
        client = logger.experiment
        try:
            experiment = f" in experiment {client.get_experiment(logger.experiment_id).name}"
        except Exception:  # a tracking server gone by the end of the run must not fail a finished run
            experiment = ""
        lines.append(f"MLflow run {logger.run_id}{experiment}")
        lines.append(f"open it with: {ui_command(client.tracking_uri, logger.experiment_id, logger.run_id)}")
    return [f"segpipe: {line}" for line in lines]


def ui_command(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """How to see the run: ``mlflow ui`` on a local store, the run's page on a server.

    Args:
        tracking_uri: the store (``sqlite:///...``, a folder, ``file:``) or server (``http(s)://...``).
        experiment_id: the run's experiment.
        run_id: the run.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def checkpoint_epoch(path: str) -> int | None:
    """The epoch stored in a local checkpoint file (Lightning counts from 0, as the file names do).

    Read with segpipe's one safe loader. None for remote or unreadable files: the summary then leaves the
    epoch out rather than fail a finished run.
    """
    if not Path(path).is_file():
        return None
    try:
        epoch = safe_load(path).get("epoch")
    except CheckpointError:
        return None
    return epoch if isinstance(epoch, int) else None
