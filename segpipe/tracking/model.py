"""Log the best network as an MLflow PyTorch model that loads without segpipe installed; link metrics to it."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

import segpipe
from segpipe.io.checkpoints import safe_load
from segpipe.tracking.logger import MLflowLogger, mlflow_logger
from segpipe.tracking.metadata import as_network_input, sample_shape


def pinned_requirements() -> list[str]:
    """segpipe's own runtime dependencies pinned to the installed versions (local tags such as ``+cpu``
    dropped), for the model's environment; segpipe itself travels as code (``code_paths``)."""
    from packaging.requirements import Requirement

    pinned = []
    for line in requires("segpipe") or []:
        requirement = Requirement(line)
        if requirement.marker is not None:  # optional extras (e.g. postgres) are not needed to load a model
            continue
        try:
            pinned.append(f"{requirement.name}=={version(requirement.name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(str(requirement))
    return sorted(pinned)


def link_metrics(logger: MLflowLogger, metrics: Mapping[str, float], step: int, model_id: str | None) -> None:
    """Log ``metrics`` to the run and, given a ``model_id``, to that MLflow LoggedModel (the Models tab
    ranks models by them). Keys lose the characters MLflow refuses, as in :meth:`MLflowLogger.log_metrics`."""
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    batch = [
        Metric(re.sub(r"[^a-zA-Z0-9_/. -]+", "", key), float(value), timestamp, step, model_id=model_id)
        for key, value in metrics.items()
    ]
    if batch:
        logger.guard("metrics", lambda: logger.experiment.log_batch(logger.run_id, metrics=batch, synchronous=True))


class LogBestModel(Callback):
    """At the end of fit, log the network of the best checkpoint as the run's ``model``.

    ``mlflow.pytorch.load_model("runs:/<run id>/model")`` then returns the plain ``nn.Module``: input
    (B, C, *spatial) float32, output logits (B, K, *spatial). The model carries segpipe's code
    (``code_paths``) and pins segpipe's dependencies (:func:`pinned_requirements`), so it loads where
    segpipe is not installed. The input example is one validation case (one window of ``inference_roi``
    for sliding-window models). The best score of the checkpoint's monitor is linked to the model as
    ``<monitor>_best`` (e.g. ``val/dice_best``); the test report links the test metrics (``model_id``).

    Args:
        enabled: log the model.
        registered_model_name: also register it in the model registry under this name (a new version
            per fit).
    """

    def __init__(self, enabled: bool = True, registered_model_name: str | None = None) -> None:
        self.enabled = enabled
        self.registered_model_name = registered_model_name
        self.model_id: str | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if not self.enabled or logger is None or not trainer.is_global_zero:
            return
        net = copy.deepcopy(pl_module.net).cpu().eval()
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "")
        if best:
            state = safe_load(best)["state_dict"]
            net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
        roi = pl_module.hparams.get("inference_roi")
        shape = (1, pl_module.hparams.in_channels, *roi) if roi else sample_shape(trainer.datamodule)
        if shape is None:
            return
        example = torch.zeros(shape)
        if not roi:
            example = torch.as_tensor(trainer.datamodule.datasets["val"][0]["image"])[None].float()
            example = as_network_input(example, pl_module.hparams)
        with torch.no_grad():
            output = net(example)
        self.model_id = logger.guard(
            "model", lambda: log_network(logger, net, example, output, self.registered_model_name)
        )
        score, monitor = getattr(checkpoint, "best_model_score", None), getattr(checkpoint, "monitor", None)
        if self.model_id is not None and score is not None and monitor:
            link_metrics(logger, {f"{monitor}_best": float(score)}, trainer.global_step, self.model_id)


def log_network(
    logger: MLflowLogger,
    net: torch.nn.Module,
    example: torch.Tensor,
    output: torch.Tensor,
    registered_model_name: str | None = None,
) -> str:
    """Log ``net`` as ``model`` into the logger's run (and register it); return the MLflow LoggedModel id.

    Args:
        logger: the run's logger.
        net: the network, on the CPU.
        example: an input (1, C, *spatial), saved as the input example.
        output: ``net(example)`` (1, K, *spatial), for the signature.
        registered_model_name: register the model under this name (a new version each time).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(logger.tracking_uri)
    with mlflow.start_run(run_id=logger.run_id):
        info = mlflow.pytorch.log_model(
            net,
            name="model",
            input_example=example.numpy(),
            signature=infer_signature(example.numpy(), output.numpy()),
            registered_model_name=registered_model_name,
            # mlflow's default here is torch.export ("pt2"), which fixes the batch size and image size
            # to those of the example; the pickled module takes any (B, C, *spatial).
            serialization_format="pickle",
            # The pickle names segpipe's classes: ship the package so that it unpickles anywhere.
            code_paths=[str(Path(segpipe.__file__).parent)],
            pip_requirements=pinned_requirements(),
        )
    return info.model_id
