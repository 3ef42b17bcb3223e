"""Record the resolved LightningCLI config in the MLflow run: as params and as a YAML artifact."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback

from segpipe.tracking.logger import MLflowLogger

# MLflow rejects parameter values longer than this.
MAX_PARAM_LENGTH = 6000


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists of mappings are indexed (``a.0.b``)."""
    flat: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(config, list) and any(isinstance(v, dict) for v in config):
        for i, value in enumerate(config):
            flat.update(flatten(value, f"{prefix}{i}."))
    else:
        flat[prefix[:-1]] = str(config)[:MAX_PARAM_LENGTH]
    return flat


class MLflowSaveConfig(SaveConfigCallback):
    """Log the resolved config to the MLflow run (once, from rank 0) instead of a local file."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if not isinstance(logger, MLflowLogger) or stage != "fit":
            return
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        config.pop("config", None)
        params = {f"config.{k}": v for k, v in flatten(config).items()}
        logger.log_hyperparams(params)
        logger.experiment.log_text(logger.run_id, text, "config/config.yaml")
