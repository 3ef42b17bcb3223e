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


def _batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.randn(2, 1, 33, 37, generator=generator),
            "mask": torch.randint(0, 3, (2, 33, 37), generator=generator),
        }
        for _ in range(3)
    ]


def _task() -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(num_classes=3, class_names=NAMES, model_kwargs={"depth": 1, "base_channels": 2})


def _reference(task: SegmentationTask, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    task.eval()
    reference = OverlapScores(3, class_names=NAMES)  # equal to the split-level formula: tests/evaluation
    with torch.no_grad():
        for batch in batches:
            reference.update(task(batch["image"]).argmax(1), batch["mask"])
    return {name: float(value) for name, value in reference.compute().items()}


def _trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def test_validation_logs_every_name_with_the_split_level_values_and_the_best():
    task, batches = _task(), _batches()
    (logged,) = _trainer().validate(task, DataLoader(batches, batch_size=None), verbose=False)
    expected = {f"val/{name}": value for name, value in _reference(task, batches).items()}
    assert len(expected) == 15  # dice, iou x (3 names + 3 indices + foreground mean), and val/dice
    assert set(logged) == {*expected, "val/loss", "val/dice_best", "best_epoch"}
    assert {k: logged[k] for k in expected} == pytest.approx(expected, rel=1e-6, abs=0)
    assert logged["val/dice_best"] == pytest.approx(logged["val/dice"]) and logged["best_epoch"] == 0


def test_test_scores_are_named_pooled():
    task, batches = _task(), _batches()
    (logged,) = _trainer().test(task, DataLoader(batches, batch_size=None), verbose=False)
    reference = _reference(task, batches)
    assert logged["test/dice_pooled"] == pytest.approx(reference["dice"], rel=1e-6)
    assert logged["test/dice_pooled_white_matter"] == pytest.approx(reference["dice_white_matter"], rel=1e-6)
    assert logged["test/iou_pooled_c1"] == pytest.approx(reference["iou_c1"], rel=1e-6)
    assert logged["test/dice_pooled_fg_mean"] == logged["test/dice_pooled"]
    assert not [k for k in logged if k.startswith("test/dice") and "_pooled" not in k]


class _EpochScores(pl.Callback):
    """Records (val/dice, val/dice_best, best_epoch) after every validation epoch."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if not trainer.sanity_checking:
            self.seen.append(tuple(float(metrics[k]) for k in ("val/dice", "val/dice_best", "best_epoch")))


def test_the_best_score_is_the_running_maximum_and_travels_in_the_checkpoint():
    task, batches, scores = _task(), _batches(), _EpochScores()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=4, logger=False, callbacks=[scores], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, DataLoader(batches, batch_size=None), DataLoader(batches, batch_size=None))
    dice = [d for d, _, _ in scores.seen]
    assert len(dice) == 4
    for epoch, (_, best, best_epoch) in enumerate(scores.seen):
        assert best == pytest.approx(max(dice[: epoch + 1]))
        assert dice[int(best_epoch)] == pytest.approx(best)
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    resumed = _task()
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.best_score == task.best_score and task.best_score["value"] == pytest.approx(max(dice))


def test_the_help_lists_every_architecture_with_its_options():
    doc = SegmentationTask.__doc__ or ""
    assert "MODEL_OPTIONS" not in doc
    unet = "unet: depth=4, base_channels=64, norm='batch', upsample='transpose', padded=True, dropout=0.0, "
    assert unet + "pool_sizes=None, kernel_sizes=None;" in doc
    assert "fc_densenet56: dropout=0.2, norm='batch';" in doc and "encoder_fcn: encoder='resnet34'" in doc
