"""Read a training config the way ``segpipe fit`` reads it: the one config reader of segpipe.

Every command that needs a config (``segpipe summary``, ``export --config``, ``check-data config.yaml``)
parses it with the fit parser (:class:`segpipe.cli.fit.SegpipeCLI`'s, jsonargparse), so defaults,
``--config`` composition and command-line overrides hold exactly as they do for training::

    config = read_config(["--config", "configs/demo.yaml", "--data.init_args.batch_size", "2"])
    model_hparams(config)["model"]      # "unet"
    data_init_args(config)["batch_size"]  # 2
    datamodule = instantiate_data(config)
"""

from __future__ import annotations

import argparse
import itertools
import warnings
from collections.abc import Mapping
from typing import Any

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser
from torch import nn

from segpipe.cli.fit import SegpipeCLI, cli_arguments
from segpipe.errors import SegpipeError
from segpipe.models import build_model

# albumentations crops whose output size is the training patch of a 2D DataModule
CROP_TRANSFORMS = ("RandomCrop", "CenterCrop", "CropNonEmptyMaskIfExists")


class ConfigError(SegpipeError):
    """A config or override that the fit parser rejects (unknown key, wrong type, YAML syntax)."""


class _ConfigReader(SegpipeCLI):
    """The fit parser without the run: parses, keeps the config, instantiates nothing and seeds nothing."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:  # what jsonargparse raises with exit_on_error=False
            raise ConfigError(f"{_config_files(list(args or []))}: {' '.join(str(err).split())}") from None
        self.parsed = self.config.clone()
        # Reading a config must not seed the process's random generators (LightningCLI would).
        self.config.seed_everything = False

    def instantiate_classes(self) -> None:
        """Nothing is built: callers instantiate the sections they need (:func:`instantiate_data`)."""


def _config_files(args: list[str]) -> str:
    """The ``--config`` files among ``args``, to name in an error (the command line when there are none)."""
    files = [value for flag, value in itertools.pairwise(args) if flag == "--config"]
    files += [arg.removeprefix("--config=") for arg in args if arg.startswith("--config=")]
    return ", ".join(files) or "the command line"


def read_config(args: list[str]) -> Namespace:
    """Parse ``args`` (``--config file.yaml`` and dotted overrides) with the ``segpipe fit`` parser.

    Returns the resolved Namespace (``model``, ``data``, ``trainer``, ``checkpoint``, ...) with the
    parser's defaults filled in; nothing is instantiated.

    Raises:
        ConfigError: a config file that is missing or not YAML, an unknown key, a value of the wrong type.
    """
    with warnings.catch_warnings():  # args are given on purpose, while sys.argv holds another command
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        reader = _ConfigReader(**cli_arguments(args), run=False, parser_kwargs={"exit_on_error": False})
    return reader.parsed


def model_hparams(config: Namespace) -> dict[str, Any]:
    """The model section as the task's keyword arguments (``model``, ``spatial_dims``, ``model_kwargs``, ...)."""
    return config.model.as_dict()


def data_init_args(config: Namespace) -> dict[str, Any]:
    """The data section's ``init_args``, the DataModule's defaults filled in (the fit parser requires the section)."""
    return config.data.init_args.as_dict()


def instantiate_data(config: Namespace) -> LightningDataModule:
    """The configured DataModule, built alone (the model and trainer are not).

    Raises:
        SegpipeError, ValueError: what the DataModule's constructor raises for values it refuses.
    """
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    return parser.instantiate_classes(parser.parse_object({"data": config.data.as_dict()})).data


def training_patch_size(data_args: Mapping[str, Any], spatial_dims: int) -> list[int] | None:
    """The spatial size of a training sample: ``patch_size`` (3D, slices), or a 2D crop transform's size.

    ``data_args`` are a DataModule's init args (:func:`data_init_args`, or a checkpoint's
    ``datamodule_hyper_parameters``); None when they fix no size (whole 2D images).
    """
    patch = data_args.get("patch_size")
    if isinstance(patch, int):
        return [patch] * spatial_dims
    if isinstance(patch, list | tuple) and len(patch) == spatial_dims:
        return [int(p) for p in patch]
    for transform in data_args.get("train_transforms") or []:
        if isinstance(transform, Mapping) and transform.get("name") in CROP_TRANSFORMS and spatial_dims == 2:
            height, width = transform.get("height"), transform.get("width")
            if isinstance(height, int) and isinstance(width, int):
                return [height, width]
    return None


def build_network(hparams: Mapping[str, Any]) -> nn.Module:
    """The task's network from its hyperparameters: :func:`model_hparams`, or a checkpoint's
    ``hyper_parameters`` (the task saves every init argument, defaults included).

    Raises:
        KeyError: for hyperparameters without ``model``, ``spatial_dims``, ``in_channels`` or ``num_classes``.
        ValueError: for an unknown architecture (the message suggests the closest name).
        TypeError: for an option the architecture does not take.
    """
    return build_model(
        str(hparams["model"]),
        spatial_dims=int(hparams["spatial_dims"]),
        in_channels=int(hparams["in_channels"]),
        num_classes=int(hparams["num_classes"]),
        **dict(hparams.get("model_kwargs") or {}),
    )
