"""The CLIs only wire: the model's public requirements go to a DataModule that checks its data itself."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest

from segpipe.cli.wiring import check_data_for_model
from segpipe.data.requirements import ModelRequirements
from segpipe.errors import DataError


class RecordingDataModule(pl.LightningDataModule):
    """Implements the CheckedDataModule hook: records what it was asked to check, refuses 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[tuple[ModelRequirements, str]] = []

    def check_for(self, model: ModelRequirements, stage: str) -> None:
        self.checked.append((model, stage))
        if model.num_classes == 5:
            raise DataError("data/labels", f"labels fit 3 classes, the model has num_classes={model.num_classes}")


class TaskWithRequirements(pl.LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def requirements(self) -> ModelRequirements:
        return ModelRequirements(num_classes=self.num_classes, in_channels=1, spatial_dims=3)


def trainer(local_rank: int = 0) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(cluster_environment=SimpleNamespace(local_rank=lambda: local_rank)))


def test_the_models_requirements_are_handed_to_the_datamodule():
    datamodule = RecordingDataModule()
    check_data_for_model(TaskWithRequirements(3), datamodule, trainer(), "validate")
    assert datamodule.checked == [(ModelRequirements(3, 1, 3, 2), "validate")]


def test_the_datamodules_refusal_reaches_the_caller():
    with pytest.raises(DataError, match="num_classes=5"):
        check_data_for_model(TaskWithRequirements(5), RecordingDataModule(), trainer(), "fit")


def test_nothing_is_checked_without_the_hook_the_requirements_or_on_other_local_ranks():
    datamodule = RecordingDataModule()
    check_data_for_model(pl.LightningModule(), datamodule, trainer(), "fit")  # a model without requirements()
    check_data_for_model(TaskWithRequirements(3), datamodule, trainer(local_rank=1), "fit")  # a sibling process
    assert datamodule.checked == []
    check_data_for_model(TaskWithRequirements(5), pl.LightningDataModule(), trainer(), "fit")  # no check_for
