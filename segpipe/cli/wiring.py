"""What every LightningCLI of segpipe wires the same way: atomic checkpoint writes and the data check hook."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from segpipe.data.requirements import CheckedDataModule
from segpipe.distributed import is_local_zero
from segpipe.io.checkpoints import with_atomic_checkpoint_io


def atomic_checkpoint_plugins(cli: LightningCLI) -> list[Any]:
    """The configured ``trainer.plugins`` with segpipe's atomic CheckpointIO (unless one is configured)."""
    config = cli.config_init[cli.subcommand] if cli.subcommand else cli.config_init
    return with_atomic_checkpoint_io((config.get("trainer") or {}).get("plugins"))


def check_data_for_model(
    model: LightningModule, datamodule: LightningDataModule | None, trainer: Trainer, stage: str
) -> None:
    """Hand what the model expects (its public ``requirements()``) to a DataModule that checks its data.

    Any other DataModule, or a model without ``requirements()``, is left to Lightning. One process per
    node checks (and builds) the data while its siblings wait for it inside the stage.

    Raises:
        SegpipeError: the DataModule's first problem (a DataError names its file).
    """
    requirements = getattr(model, "requirements", None)
    if isinstance(datamodule, CheckedDataModule) and callable(requirements) and is_local_zero(trainer):
        datamodule.check_for(requirements(), stage)
