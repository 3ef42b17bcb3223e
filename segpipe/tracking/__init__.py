"""Experiment tracking with MLflow."""

from segpipe.tracking.config import MLflowSaveConfig
from segpipe.tracking.logger import DEFAULT_TRACKING_URI, MLflowLogger

__all__ = ["DEFAULT_TRACKING_URI", "MLflowLogger", "MLflowSaveConfig"]
