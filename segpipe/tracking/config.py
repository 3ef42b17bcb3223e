"""Record the resolved LightningCLI config in the MLflow run: as params and as a YAML artifact."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

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


def default_run_name(model: str, spatial_dims: int = 2, model_kwargs: Mapping[str, Any] | None = None) -> str:
    """A run name that says which network a run trained: ``unet``, ``fcn8s``, ``segnet3d``, ``encoder_unet-resnet34``.

    Used when the config gives no ``run_name``, so that runs in the MLflow UI are told apart by their
    architecture rather than by MLflow's random names.
    """
    kwargs = model_kwargs or {}
    name = model
    if model == "fcn" and kwargs.get("variant"):
        name += str(kwargs["variant"])
    if kwargs.get("encoder"):
        name += f"-{kwargs['encoder']}"
    return f"{name}3d" if spatial_dims == 3 else name


class MLflowSaveConfig(SaveConfigCallback):
    """Log the resolved config to the MLflow run (once, from rank 0) instead of a local file.

    A resumed run keeps its first params (MLflow params are immutable); the config of each resumption
    is stored next to the first as ``config/config-resumed-<date-time>.yaml`` and the changed keys are
    named in a warning.
    """

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if not isinstance(logger, MLflowLogger) or stage != "fit":
            return
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        config.pop("config", None)
        params = {f"config.{k}": v for k, v in flatten(config).items()}
        if not logger.resumed:
            logger.log_hyperparams(params)
            logger.log_text(text, "config/config.yaml")
            return
        changed = logger.log_params_once(params)
        logger.log_text(text, f"config/config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        changed = [k for k in changed if k not in ("config.ckpt_path", "config.trainer.logger.init_args.run_id")]
        if changed:
            rank_zero_warn(
                f"resumed run {logger.run_id} keeps its first values of {', '.join(changed)}; "
                "the new config is in config/config-resumed-*.yaml"
            )
