"""What the resolved LightningCLI config tells MLflow: the run's name, its tags, about twenty headline
params with short names, and the whole config as a YAML artifact."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from segpipe.tracking.logger import MLflowLogger

DATASET_JSON = "dataset.json"
# Model options that say how deep and how wide a network is, per architecture family.
DEPTH_OPTIONS = ("depth", "encoder_depth")
WIDTH_OPTIONS = ("base_channels", "init_features")


def network_name(model: str, spatial_dims: int = 2, model_kwargs: Mapping[str, Any] | None = None) -> str:
    """Which network a run trained: ``unet``, ``fcn8s``, ``segnet3d``, ``encoder_unet-resnet34``."""
    kwargs = model_kwargs or {}
    name = model
    if model == "fcn" and kwargs.get("variant"):
        name += str(kwargs["variant"])
    if kwargs.get("encoder"):
        name += f"-{kwargs['encoder']}"
    return f"{name}3d" if spatial_dims == 3 else name


def model_kwargs_with_defaults(model: str, model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The architecture's options: its builder's defaults, then the config's (an unknown model: the config's)."""
    from segpipe.models import model_options

    try:
        defaults = model_options(model)
    except ValueError:  # refused with its list of names when the task is built
        defaults = {}
    return {**defaults, **(model_kwargs or {})}


def first_option(model_kwargs: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` that ``model_kwargs`` sets (not None), else None."""
    return next((model_kwargs[name] for name in names if model_kwargs.get(name) is not None), None)


def network_size(model_kwargs: Mapping[str, Any]) -> str:
    """``d4w16`` for depth 4 and 16 base channels; the parts a network has no option for are left out."""
    depth, width = first_option(model_kwargs, DEPTH_OPTIONS), first_option(model_kwargs, WIDTH_OPTIONS)
    return (f"d{depth}" if depth is not None else "") + (f"w{width}" if width is not None else "")


def network_and_options(model: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The network's name (:func:`network_name`; a classifier's: its ``encoder``) and its options with
    defaults, from the ``model`` section of a config."""
    if "model" not in model:  # a classifier (segpipe classify)
        return model.get("encoder"), {}
    kwargs = model_kwargs_with_defaults(str(model["model"]), model.get("model_kwargs"))
    return network_name(str(model["model"]), int(model.get("spatial_dims", 2)), kwargs), kwargs


def dataset_identity(root: str | Path | None) -> dict[str, str]:
    """``{"dataset", "modality"}`` of a dataset folder: ``name`` and channel names of its ``dataset.json``
    (``channel_names`` of nnU-Net v2, ``modality`` of the Decathlon) when it has one, else the folder's name
    and ``image``. Empty without a root. An unreadable ``dataset.json`` is ignored here: the data check
    reports it, naming the file, before anything is written."""
    if root is None:
        return {}
    folder = Path(root)
    if folder.suffix:  # a case list file names the dataset folder that holds it
        folder = folder.parent
    identity = {"dataset": folder.resolve().name, "modality": "image"}
    try:
        content = json.loads((folder / DATASET_JSON).read_text())
    except (OSError, ValueError):
        return identity
    if not isinstance(content, dict):
        return identity
    if isinstance(content.get("name"), str) and content["name"].strip():
        identity["dataset"] = content["name"].strip()
    channels = content.get("channel_names") or content.get("modality")
    if isinstance(channels, dict) and channels:
        identity["modality"] = "+".join(str(v) for v in channels.values())
    return identity


def run_identity(config: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The default run name (``demo-unet-d4w16-2d``) and the tags ``task``, ``spatial_dims``, ``network``,
    ``dataset``, ``modality`` of a resolved fit config (``model`` and ``data`` sections as dicts)."""
    model = config.get("model") or {}
    data_args = (config.get("data") or {}).get("init_args") or {}
    dims = int(model.get("spatial_dims", 2))
    network, kwargs = network_and_options({"model": "unet", **model})
    identity = dataset_identity(data_args.get("root"))
    parts = [identity.get("dataset"), str(network).removesuffix("3d"), network_size(kwargs), f"{dims}d"]
    tags = {"task": "segmentation", "spatial_dims": str(dims), "network": str(network), **identity}
    return "-".join(p for p in parts if p), tags


def class_name(factory: Any) -> str | None:
    """``torch.optim.AdamW`` (or ``{"class_path": "torch.optim.AdamW", ...}``) -> ``AdamW``; None -> None."""
    if isinstance(factory, dict):
        factory = factory.get("class_path")
    return None if factory is None else str(factory).rpartition(".")[2]


def headline_params(config: Mapping[str, Any]) -> dict[str, str]:
    """About fifteen params with short names that tell runs apart in MLflow's table and compare view:
    network, its depth, width and norm, loss, optimiser, lr, weight decay, schedule, batch size, patch
    size, epochs, precision, seed, dataset and normalisation. Options a run does not have (no depth, no
    seed) are left out rather than logged as ``None``; the whole config is the artifact ``config/config.yaml``.
    """
    model = config.get("model") or {}
    data_args = (config.get("data") or {}).get("init_args") or {}
    trainer = config.get("trainer") or {}
    optimizer, scheduler = model.get("optimizer"), model.get("lr_scheduler")
    # A factory given by class_path has init_args; a function (segpipe's default) is named as it is.
    optimizer_args = (optimizer.get("init_args") or {}) if isinstance(optimizer, dict) else {}
    network, kwargs = network_and_options(model)
    params = {
        "network": network,
        "depth": first_option(kwargs, DEPTH_OPTIONS),
        "width": first_option(kwargs, WIDTH_OPTIONS),
        "norm": kwargs.get("norm"),
        "loss": model.get("loss"),
        "optimizer": class_name(optimizer),
        "lr": optimizer_args.get("lr"),
        "weight_decay": optimizer_args.get("weight_decay"),
        "scheduler": class_name(scheduler) or "constant",
        "batch_size": data_args.get("batch_size"),
        "patch_size": "x".join(map(str, data_args["patch_size"])) if data_args.get("patch_size") else None,
        "epochs": trainer.get("max_epochs"),
        "precision": trainer.get("precision"),
        "seed": config.get("seed_everything"),
        "dataset": dataset_identity(data_args.get("root")).get("dataset"),
        "normalization": data_args.get("normalization"),
    }
    # False is LightningCLI's "no seed" (seed_everything: false): left out like None.
    return {key: str(value) for key, value in params.items() if value is not None and value is not False}


class MLflowSaveConfig(SaveConfigCallback):
    """Log the headline params (:func:`headline_params`) and the resolved config as ``config/config.yaml``
    to the MLflow run (once, from rank 0) instead of a local file.

    A resumed run keeps its first params (MLflow params are immutable); the config of each resumption
    is stored next to the first as ``config/config-resumed-<date-time>.yaml`` and the changed params are
    named in a warning.
    """

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if not isinstance(logger, MLflowLogger) or stage != "fit":
            return
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        params = headline_params(config)
        if not logger.resumed:
            logger.log_hyperparams(params)
            logger.log_text(text, "config/config.yaml")
            return
        changed = logger.log_params_once(params)
        logger.log_text(text, f"config/config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        if changed:
            rank_zero_warn(
                f"resumed run {logger.run_id} keeps its first values of {', '.join(changed)}; "
                "the new config is in config/config-resumed-*.yaml"
            )
