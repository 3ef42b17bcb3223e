"""``segpipe classify``: train, evaluate and apply an image classifier whose encoder later seeds segmentation.

segpipe classify fit --config configs/classify_demo.yaml
segpipe fit --config configs/pretrained_unet.yaml --model.model_kwargs.encoder_weights <classify .ckpt>
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from segpipe.cli.wiring import atomic_checkpoint_plugins
from segpipe.data.modules.classification import ClassificationFolderDataModule
from segpipe.errors import SegpipeError
from segpipe.tasks.classification import ClassificationTask
from segpipe.tracking import MLflowLogger, MLflowSaveConfig

DESCRIPTION = """\
segpipe classify: train a classification network (ResNet, VGG, DenseNet, any timm model) on a folder
with one subfolder of images per class, logged to MLflow like segmentation runs. Subcommands fit,
validate, test, predict. The best checkpoint (on val/acc) can then be named as a segmentation model's
model_kwargs.encoder_weights.
"""


class ClassifyCLI(LightningCLI):
    """LightningCLI with a ``val/acc`` checkpoint, MLflow defaults and class names linked from the data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {
                    "class_path": f"{MLflowLogger.__module__}.{MLflowLogger.__name__}",
                    "init_args": {"experiment_name": "segpipe-classify"},
                },
                "trainer.default_root_dir": "outputs",
            }
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        kwargs["plugins"] = atomic_checkpoint_plugins(self)
        return super().instantiate_trainer(**kwargs)

    def _check_classes(self) -> None:
        # Kept as before until ClassificationTask.requirements() and ClassificationFolderDataModule.check_for
        # exist (not in this branch's files); then before_* call segpipe.cli.wiring.check_data_for_model.
        datamodule = self.datamodule
        if isinstance(datamodule, ClassificationFolderDataModule):
            datamodule.prepare_data()
            names = datamodule.class_names()
            if len(names) != self.model.hparams.num_classes:
                raise SegpipeError(
                    f"{datamodule.root} has {len(names)} classes {names}, "
                    f"but model.num_classes is {self.model.hparams.num_classes}"
                )

    def before_fit(self) -> None:
        self._check_classes()

    def before_validate(self) -> None:
        self._check_classes()

    def before_test(self) -> None:
        self._check_classes()


def run_cli(args: list[str] | None = None) -> ClassifyCLI:
    return ClassifyCLI(
        ClassificationTask,
        ClassificationFolderDataModule,
        subclass_mode_data=True,
        save_config_callback=MLflowSaveConfig,
        save_config_kwargs={"save_to_log_dir": False},
        parser_kwargs={"description": DESCRIPTION},
        auto_configure_optimizers=False,
        args=args,
    )


def main(argv: list[str] | None = None) -> int:
    """``segpipe classify fit|validate|test|predict ...``; returns 0.

    Raises:
        SegpipeError: a configuration or data problem, reported by :func:`segpipe.cli.main`.
    """
    run_cli(list(sys.argv[1:] if argv is None else argv))
    return 0
