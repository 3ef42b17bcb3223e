"""Experiment tracking with MLflow: logger, config, run metadata, figures, test reports, model, resume."""

from segpipe.tracking.case_report import TestReport
from segpipe.tracking.config import MLflowSaveConfig
from segpipe.tracking.logger import DEFAULT_TRACKING_URI, MLflowLogger
from segpipe.tracking.metadata import RunMetadata
from segpipe.tracking.model import LogBestModel
from segpipe.tracking.overlays import ValidationOverlays
from segpipe.tracking.resume import RunIdInCheckpoint, resumable_run_id

__all__ = [
    "DEFAULT_TRACKING_URI",
    "LogBestModel",
    "MLflowLogger",
    "MLflowSaveConfig",
    "RunIdInCheckpoint",
    "RunMetadata",
    "TestReport",
    "ValidationOverlays",
    "resumable_run_id",
]
