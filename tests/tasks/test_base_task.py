"""BaseTask: one optimiser set-up and one metric collection per stage, for both tasks."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader

from segpipe.evaluation import OverlapScores
from segpipe.tasks import SegmentationTask
from segpipe.tasks.classification import ClassificationTask

NAMES = ["background", "grey_matter", "white_matter"]


def _plateau(optimizer: torch.optim.Optimizer) -> ReduceLROnPlateau:
    return ReduceLROnPlateau(optimizer, mode="max")


@pytest.mark.parametrize(
    ("task", "monitor"),
    [
        (SegmentationTask(model_kwargs={"depth": 1, "base_channels": 2}, lr_scheduler=_plateau), "val/dice"),
        (ClassificationTask(lr_scheduler=_plateau), "val/acc"),
    ],
)
def test_plateau_schedules_watch_the_task_monitor(task, monitor):
    config = task.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == monitor and config["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(config["optimizer"], torch.optim.AdamW) and config["optimizer"].defaults["lr"] == 1e-3
    frozen = sum(p.numel() for p in task.parameters() if not p.requires_grad)
    given = sum(p.numel() for group in config["optimizer"].param_groups for p in group["params"])
    assert given == sum(p.numel() for p in task.parameters()) - frozen


def test_validation_logs_every_name_with_the_split_level_values():
    torch.manual_seed(0)
    task = SegmentationTask(num_classes=3, class_names=NAMES, model_kwargs={"depth": 1, "base_channels": 2})
    generator = torch.Generator().manual_seed(1)
    batches = [
        {
            "image": torch.randn(2, 1, 33, 37, generator=generator),
            "mask": torch.randint(0, 3, (2, 33, 37), generator=generator),
        }
        for _ in range(3)
    ]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (logged,) = trainer.validate(task, DataLoader(batches, batch_size=None), verbose=False)
    task.eval()
    reference = OverlapScores(3, class_names=NAMES)  # equal to the split-level formula: tests/evaluation
    with torch.no_grad():
        for batch in batches:
            reference.update(task(batch["image"]).argmax(1), batch["mask"])
    expected = {f"val/{name}": float(value) for name, value in reference.compute().items()}
    assert len(expected) == 7
    assert set(logged) == {*expected, "val/loss"}
    assert {k: logged[k] for k in expected} == pytest.approx(expected, rel=1e-6, abs=0)


def test_the_help_lists_every_architecture_with_its_options():
    doc = SegmentationTask.__doc__ or ""
    assert "MODEL_OPTIONS" not in doc
    assert "unet: depth=4, base_channels=64, norm='batch', upsample='transpose', padded=True, dropout=0.0;" in doc
    assert "fc_densenet56: dropout=0.2, norm='batch';" in doc and "encoder_fcn: encoder='resnet34'" in doc
