"""Log the best network as an MLflow PyTorch model (optionally registered) with signature and input example."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from segpipe.io.checkpoints import safe_load
from segpipe.tracking.logger import MLflowLogger, mlflow_logger
from segpipe.tracking.metadata import as_network_input, sample_shape

if TYPE_CHECKING:
    from mlflow.models import ModelSignature


class LogBestModel(Callback):
    """At the end of fit, log the network of the best checkpoint as the run's ``model``.

    ``mlflow.pytorch.load_model("runs:/<run id>/model")`` then returns the plain ``nn.Module``
    (segpipe must be importable): input (B, C, *spatial) float32, output logits (B, K, *spatial). The input
    example is one validation case (one window of ``inference_roi`` for sliding-window models).

    Args:
        enabled: log the model.
        registered_model_name: also register it in the model registry under this name.
    """

    def __init__(self, enabled: bool = True, registered_model_name: str | None = None) -> None:
        self.enabled = enabled
        self.registered_model_name = registered_model_name

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if not self.enabled or logger is None or not trainer.is_global_zero:
            return
        net = copy.deepcopy(pl_module.net).cpu().eval()
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
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
        from mlflow.models import infer_signature  # imported here: mlflow loads only when a model is logged

        signature = infer_signature(example.numpy(), output.numpy())
        logger.guard("model", lambda: self._log(logger, net, example, signature))

    def _log(
        self, logger: MLflowLogger, net: torch.nn.Module, example: torch.Tensor, signature: ModelSignature
    ) -> None:
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(logger.tracking_uri)
        with mlflow.start_run(run_id=logger.run_id):
            mlflow.pytorch.log_model(
                net,
                name="model",
                input_example=example.numpy(),
                signature=signature,
                registered_model_name=self.registered_model_name,
                # mlflow's default here is torch.export ("pt2"), which fixes the batch size and image size
                # to those of the example; the pickled module takes any (B, C, *spatial).
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            )
