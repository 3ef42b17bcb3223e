"""Lightning's MLFlowLogger with segpipe's defaults."""

from __future__ import annotations

import os
from typing import Any, Literal

from lightning.pytorch.loggers import MLFlowLogger

# MLflow 3 refuses a bare ./mlruns file store; a SQLite file is the embedded default.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class MLflowLogger(MLFlowLogger):
    """MLFlowLogger whose tracking URI comes from ``MLFLOW_TRACKING_URI`` when set, else the config.

    Args:
        experiment_name: MLflow experiment (created if missing).
        run_name: display name of the run.
        tracking_uri: store or server, ``sqlite:///mlflow.db`` by default; the environment variable
            ``MLFLOW_TRACKING_URI`` overrides it.
        tags: run tags.
        log_model: log checkpoints as artifacts (``True``: at the end of training; ``all``: as written).
        artifact_location: artifact root for a newly created experiment.
        run_id: attach to an existing run instead of creating one.
    """

    def __init__(
        self,
        experiment_name: str = "segpipe",
        run_name: str | None = None,
        tracking_uri: str = DEFAULT_TRACKING_URI,
        tags: dict[str, Any] | None = None,
        log_model: Literal[True, False, "all"] = True,
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri,
            tags=tags,
            log_model=log_model,
            artifact_location=artifact_location,
            run_id=run_id,
        )
