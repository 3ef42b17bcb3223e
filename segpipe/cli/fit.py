"""``segpipe fit|validate|test|predict``: LightningCLI with segpipe's checkpointing, MLflow and data checks.

segpipe fit --config configs/demo.yaml [--trainer.max_epochs 3 ...]
segpipe predict --config configs/demo.yaml --ckpt_path best.ckpt --data.predict_dir scans/
segpipe predict --config configs/unet3d.yaml --ensemble outputs/<experiment id>/ --data.predict_dir scans/

The same parser reads configs for the other commands (:mod:`segpipe.config`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from segpipe.callbacks import (
    NonFiniteGuard,
    PerformanceFlags,
    PostprocessingSelection,
    RandomStateInCheckpoint,
    ResumableCheckpoint,
)
from segpipe.cli import DESCRIPTION
from segpipe.cli.run_summary import summary_lines
from segpipe.cli.wiring import atomic_checkpoint_plugins, check_data_for_model
from segpipe.errors import SegpipeError
from segpipe.inference import MaskWriter
from segpipe.inference.ensemble import build_ensemble
from segpipe.inference.ensemble_members import resolve_members
from segpipe.io.checkpoints import LAST, check_checkpoint, check_writable
from segpipe.tasks import SegmentationTask
from segpipe.tracking import (
    LogBestModel,
    MLflowLogger,
    MLflowSaveConfig,
    RunIdInCheckpoint,
    RunMetadata,
    TestReport,
    ValidationOverlays,
    resumable_run_id,
)
from segpipe.tracking.config import run_identity
from segpipe.tracking.logger import DEFAULT_TRACKING_URI, effective_tracking_uri
from segpipe.tracking.resume import last_checkpoint_in, last_checkpoint_of_experiment

# Task arguments that say how the network runs over whole inputs, not what it learnt.
INFERENCE_SETTINGS = (
    "tta",
    "inference_roi",
    "inference_overlap",
    "inference_batch_size",
    "inference_sw_device",
    "inference_device",
    "inference_dtype",
)


class SegpipeCLI(LightningCLI):
    """LightningCLI with segpipe's checkpointing, prediction writer, MLflow defaults and data checks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                # Each run has its own folder; a resumed run rewrites the same names (no "-v1" copies).
                "checkpoint.enable_version_counter": False,
                "checkpoint.monitor": "val/dice",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-dice{val/dice:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {"class_path": f"{MLflowLogger.__module__}.{MLflowLogger.__name__}"},
                "trainer.default_root_dir": "outputs",
                # Lightning's table counts FLOPs only with an example input (else "Total FLOPs: 0");
                # `segpipe summary` and the run's model.* params give the counts.
                "trainer.enable_model_summary": False,
            }
        )
        parser.add_lightning_class_args(MaskWriter, "predict_writer")
        # MLflow extras: each is a callback configurable in YAML (e.g. --overlays.every_n_epochs 5).
        parser.add_lightning_class_args(ValidationOverlays, "overlays")
        parser.add_lightning_class_args(TestReport, "test_report")
        parser.add_lightning_class_args(RunMetadata, "run_metadata")
        parser.add_lightning_class_args(LogBestModel, "model_logging")
        parser.add_lightning_class_args(RunIdInCheckpoint, "mlflow_run_id")
        parser.add_lightning_class_args(PerformanceFlags, "performance")
        parser.add_lightning_class_args(NonFiniteGuard, "nan_guard")
        parser.add_lightning_class_args(RandomStateInCheckpoint, "random_state")
        parser.add_lightning_class_args(PostprocessingSelection, "postprocessing")
        parser.add_argument(
            "--ensemble",
            type=str,
            nargs="+",
            default=None,
            help=(
                "test/predict: average the class probabilities of several checkpoints: files, folders (the best "
                "checkpoint of each run folder under it) or mlflow:<experiment name> (its finished runs' best)."
                " Excludes --ckpt_path."
            ),
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, evaluate the best checkpoint on the test split (when it has cases).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        # Before LightningCLI reads the checkpoint's hyperparameters: resolve `last`, refuse unsafe files.
        config = self.config.get(str(self.config.get("subcommand")))
        self._inference_settings = inference_settings_given(config, args)
        if config is not None and config.get("ensemble"):
            self._check_ensemble_use(config)
        if config is None or not config.get("ckpt_path"):
            return
        if config.ckpt_path == LAST:
            config.ckpt_path = self._last_checkpoint(config)
        if config.ckpt_path:
            check_checkpoint(config.ckpt_path)

    def _check_ensemble_use(self, config: Namespace) -> None:
        """Refuse ``--ensemble`` outside test/predict and together with ``--ckpt_path``."""
        if self.config.subcommand not in ("test", "predict"):
            raise SegpipeError(f"--ensemble is for segpipe test and predict, not {self.config.subcommand}")
        if config.get("ckpt_path"):
            raise SegpipeError("--ckpt_path and --ensemble exclude each other: pass one")

    def _use_ensemble(self) -> bool:
        """With ``--ensemble``: replace the config's task by the ensemble of the named checkpoints (run with
        the config's inference settings); False without it."""
        config = self.config_init[self.subcommand]
        if not config.get("ensemble"):
            return False
        init_args = self._mlflow_init_args(config)
        uri = effective_tracking_uri(init_args.tracking_uri if init_args is not None else DEFAULT_TRACKING_URI)
        paths = resolve_members(config.ensemble, self.trainer.default_root_dir, uri)
        keep = ("tta", "slice_axis")
        inference = {k: v for k, v in self.model.hparams.items() if k.startswith("inference_") or k in keep}
        self.model = build_ensemble(paths, inference)
        if self.trainer.is_global_zero:
            print(f"segpipe: ensemble of {len(paths)} checkpoints: {', '.join(map(str, paths))}")
        return True

    def _last_checkpoint(self, config: Namespace) -> str | None:
        """``--ckpt_path last`` (see segpipe.tracking.resume); with another logger, Lightning's own ``last``.

        None (warned) for a first ``fit``; the other subcommands need a checkpoint.
        """
        required = self.config.subcommand != "fit"
        if config.checkpoint.get("dirpath"):
            return last_checkpoint_in(config.checkpoint.dirpath, required)
        init_args = self._mlflow_init_args(config)
        if init_args is None:
            return LAST
        root, uri = config.trainer.get("default_root_dir") or ".", effective_tracking_uri(init_args.tracking_uri)
        return last_checkpoint_of_experiment(root, init_args.experiment_name, uri, required)

    def _mlflow_init_args(self, config: Namespace) -> Namespace | None:
        """The configured logger's init_args when it is segpipe's MLflowLogger (or a subclass), else None."""
        logger = config.trainer.get("logger")
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            return None
        module, _, name = str(logger.class_path).rpartition(".")
        logger_class = getattr(importlib.import_module(module), name, None) if module else None
        return init_args if isinstance(logger_class, type) and issubclass(logger_class, MLflowLogger) else None

    def before_instantiate_classes(self) -> None:
        # LightningCLI puts a checkpoint's hyperparameters over the config and the command line; how to run
        # the network over whole inputs is the caller's choice (e.g. --model.tta true at predict), not training's.
        if self.subcommand in ("validate", "test", "predict"):
            for key, value in self._inference_settings.items():
                self.config[self.subcommand].model[key] = value
        # Name and tag the MLflow run after its dataset and network (the config's run_name and tags win);
        # resume into the run stored in the checkpoint (fit continues it, test reports into it).
        if self.subcommand not in ("fit", "test"):
            return
        config = self.config[self.subcommand]
        ckpt_path, init_args = config.get("ckpt_path"), self._mlflow_init_args(config)
        if init_args is None:
            return
        name, tags = run_identity({"model": config.model.as_dict(), "data": self._data_config(config)})
        if init_args.get("run_name") is None:
            init_args.run_name = name
        init_args.tags = {**tags, **(init_args.get("tags") or {})}
        if not ckpt_path or not Path(ckpt_path).is_file() or init_args.get("run_id"):
            return
        run_id = resumable_run_id(ckpt_path, effective_tracking_uri(init_args.tracking_uri))
        if run_id is not None:
            init_args.run_id = run_id

    @staticmethod
    def _data_config(config: Namespace) -> dict[str, Any]:
        """The ``data`` section as a dict (``class_path``/``init_args``), empty when the config has none."""
        data = config.get("data")
        return data.as_dict() if isinstance(data, Namespace) else {}

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Prediction logs nothing: do not open an empty MLflow run for it.
        if self.subcommand == "predict":
            kwargs["logger"] = False
        kwargs["plugins"] = atomic_checkpoint_plugins(self)
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:
            # Lightning's refusals of accelerators, devices and precisions are configuration errors.
            visible = f"{torch.cuda.device_count()} CUDA GPU(s) visible"
            raise SegpipeError(f"trainer: {err} ({visible}; --trainer.accelerator cpu runs without one)") from None

    # ---- checks before anything is written -----------------------------------------------------
    def _check_data(self, stage: str) -> None:
        check_data_for_model(self.model, self.datamodule, self.trainer, stage)

    def before_fit(self) -> None:
        self._check_data("fit")
        output = self.config["fit"].checkpoint.get("dirpath") or self.trainer.default_root_dir
        if "://" not in str(output):
            check_writable(output)

    def before_validate(self) -> None:
        self._check_data("validate")

    def before_test(self) -> None:
        self._use_ensemble()
        self._check_data("test")

    def before_predict(self) -> None:
        config = self.config_init[self.subcommand]
        if not self._use_ensemble() and not config.get("ckpt_path"):
            raise SegpipeError("predict needs trained weights: pass --ckpt_path <checkpoint.ckpt> or --ensemble ...")
        # The writer callback saves each batch; keeping every prediction in memory as well would grow
        # with the dataset (volumes of class probabilities). --return_predictions true restores it.
        if config.get("return_predictions") is None:
            config["return_predictions"] = False
        self._check_data("predict")

    def after_fit(self) -> None:
        datamodule = self.datamodule
        run_test = self.config_init["fit"].get("test_after_fit", True)
        has_test = getattr(datamodule, "has_test_cases", None)
        if run_test and callable(has_test) and has_test():
            checkpoint = self.trainer.checkpoint_callback
            ckpt = "best" if checkpoint is not None and checkpoint.best_model_path else None
            self.trainer.test(self.model, datamodule=datamodule, ckpt_path=ckpt)
        self._print_summary(None)

    def after_test(self) -> None:
        self._print_summary(self.config_init["test"].get("ckpt_path"))

    def _print_summary(self, checkpoint: str | None) -> None:
        if self.trainer.is_global_zero:
            print("\n".join(summary_lines(self.trainer, checkpoint)))


def inference_settings_given(config: Namespace | None, args: ArgsType) -> dict[str, Any]:
    """The task's whole-input inference settings (:data:`INFERENCE_SETTINGS`) that the config or the command
    line set to something other than their defaults, or named on the command line: they win over the
    checkpoint's."""
    model = config.get("model") if config is not None else None
    if not isinstance(model, Namespace):
        return {}
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
    defaults = inspect.signature(SegmentationTask.__init__).parameters
    given = {}
    for key in INFERENCE_SETTINGS:
        named = any(a == f"--model.{key}" or a.startswith(f"--model.{key}=") for a in argv)
        if key in model and (named or model[key] != defaults[key].default):
            given[key] = model[key]
    return given


def cli_arguments(args: ArgsType) -> dict[str, Any]:
    """The LightningCLI arguments that define the fit parser, shared with :func:`segpipe.config.read_config`."""
    return {
        "model_class": SegmentationTask,
        # Any LightningDataModule by class_path; one that implements CheckedDataModule is checked first.
        "datamodule_class": LightningDataModule,
        "subclass_mode_data": True,
        "auto_configure_optimizers": False,
        "args": args,
    }


def run_cli(args: list[str] | None = None) -> SegpipeCLI:
    """Run ``segpipe fit|validate|test|predict`` on ``args`` (``sys.argv`` when None)."""
    return SegpipeCLI(
        **cli_arguments(args),
        save_config_callback=MLflowSaveConfig,
        save_config_kwargs={"save_to_log_dir": False},
        parser_kwargs={"description": DESCRIPTION},
    )
