"""Log the plan a run was made from: its files (``plan.yaml``, ``fingerprint.json``) and a few key params."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from segpipe.tracking.logger import MLflowLogger

PLAN_ARTIFACT_FOLDER = "plan"


class LogPlan(Callback):
    """At the start of fit, log ``files`` under the run's ``plan/`` artifacts and ``params`` as run params.

    ``segpipe plan`` and ``segpipe fit DATASET`` add this callback to the plan they write, so a run of the plan
    (in either command) keeps the decisions with their reasons and the dataset's fingerprint. A resumed run
    has them already (MLflow params are immutable). Only segpipe's MLflowLogger is written to.

    Args:
        files: files to log (a missing one is named in a warning: the run goes on).
        params: run params, e.g. ``{"plan/dims": "2d", "plan/patch_size": "224x192"}``.
    """

    def __init__(self, files: list[str] | None = None, params: dict[str, str] | None = None) -> None:
        self.files = list(files or [])
        self.params = dict(params or {})

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if stage != "fit" or not trainer.is_global_zero or not isinstance(logger, MLflowLogger) or logger.resumed:
            return
        if self.params:
            logger.log_hyperparams(self.params)
        for file in map(Path, self.files):
            if file.is_file():
                logger.log_artifact(file, PLAN_ARTIFACT_FOLDER)
            else:
                rank_zero_warn(f"{file}: plan file not found, not logged to the run")
