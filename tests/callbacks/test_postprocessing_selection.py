"""PostprocessingSelection: the rule chosen after fit on the validation cases, stored with the best checkpoint;
the task applies a stored rule at predict unless it is switched off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from scipy import ndimage

from segpipe.callbacks import PostprocessingSelection
from segpipe.data import FolderDataModule
from segpipe.io.checkpoints import safe_load
from segpipe.tasks import SegmentationTask


def small_task() -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(num_classes=3, model_kwargs={"depth": 2, "base_channels": 4})


def numpy_dice(prediction: np.ndarray, target: np.ndarray, cls: int) -> float:
    a, b = prediction == cls, target == cls
    return 1.0 if a.sum() + b.sum() == 0 else 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_the_rule_is_chosen_on_validation_and_stored_with_the_best_checkpoint(tmp_path: Path, flat_dataset: Path):
    dm = FolderDataModule(root=str(flat_dataset), batch_size=4, num_workers=0, val_fraction=0.25)
    task = small_task()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/dice", mode="max")
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[checkpoint, PostprocessingSelection(min_sizes=[5])],
    )
    trainer.fit(task, dm)
    last_weights = {k: v.clone() for k, v in task.state_dict().items()}

    best = Path(checkpoint.best_model_path)
    stored = safe_load(best)["postprocessing"]
    assert json.loads((best.parent / "postprocessing.json").read_text()) == stored
    assert task.postprocessing == stored
    assert set(stored["evidence"]["1"]) == {"none", "largest_component", "min_size_5"}
    # Independently: the best weights on each validation image, Dice by numpy, components by scipy.
    fresh = small_task()
    fresh.load_state_dict(safe_load(best)["state_dict"])
    fresh.eval()
    plain, largest = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            for labels, target in zip(fresh(batch["image"]).argmax(1).numpy(), batch["mask"].numpy(), strict=True):
                plain.append(numpy_dice(labels, target, 1))
                components, count = ndimage.label(labels == 1)
                if count:
                    keep = np.argmax(np.bincount(components.ravel())[1:]) + 1
                    labels = np.where((labels == 1) & (components != keep), 0, labels)
                largest.append(numpy_dice(labels, target, 1))
    for option, expected in (("none", plain), ("largest_component", largest)):
        dice_sum, cases = stored["evidence"]["1"][option]
        assert cases == len(expected) == 3
        assert dice_sum / cases == pytest.approx(np.mean(expected), abs=1e-6)
    # The pass over the validation cases leaves the task's own (last) weights as they were.
    assert all(torch.equal(last_weights[k], v) for k, v in task.state_dict().items())


class FixedLogits(torch.nn.Module):
    """A network whose output is always ``logits``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_predict_applies_the_stored_rule_unless_switched_off():
    task = small_task().eval()
    task.postprocessing = {"rule": {"1": "largest_component"}}
    logits = torch.full((1, 3, 9, 11), -5.0)
    logits[:, 0] = 0.0
    logits[:, 1, 1:4, 1:4] = 5.0  # the largest class-1 component
    logits[:, 1, 7, 8:10] = 5.0  # a speck
    task.net = FixedLogits(logits)
    batch = {"image": torch.zeros(1, 1, 9, 11), "name": ["case"]}

    cleaned = task.predict_step(batch, 0)
    assert int((cleaned["mask"] == 1).sum()) == 9
    torch.testing.assert_close(cleaned["probabilities"][0, :, 7, 8], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(cleaned["probabilities"].argmax(1), cleaned["mask"])

    PostprocessingSelection(enabled=False).on_predict_start(None, task)
    raw = task.predict_step(batch, 0)
    assert int((raw["mask"] == 1).sum()) == 11
