"""Schedules to the end of the run: the same learning rates as T_max = max_epochs, with no T_max typed."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LRSchedulerCallable
from torch.optim.lr_scheduler import CosineAnnealingLR, PolynomialLR

from segpipe.errors import SegpipeError
from segpipe.tasks import SegmentationTask
from segpipe.tasks.schedules import CosineToEnd, PolynomialToEnd, run_length

EPOCHS = 30


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.003)


def _rates(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("to_end", "reference"),
    [
        (lambda o: CosineToEnd(o, eta_min=1e-5), lambda o: CosineAnnealingLR(o, T_max=EPOCHS, eta_min=1e-5)),
        (lambda o: PolynomialToEnd(o, power=0.9), lambda o: PolynomialLR(o, total_iters=EPOCHS, power=0.9)),
    ],
)
def test_a_schedule_to_the_end_gives_the_rates_of_its_typed_twin(to_end, reference):
    scheduler = to_end(_optimizer())
    scheduler.set_run_length(EPOCHS)
    expected = _rates(reference(_optimizer()), EPOCHS + 2)
    assert _rates(scheduler, EPOCHS + 2) == expected  # exactly, epoch by epoch, past the end too
    assert expected[0] == 0.003 and expected[EPOCHS // 2] < 0.003


def test_yaml_without_a_length_parses_and_the_task_fills_it_from_the_trainer():
    parser = ArgumentParser()
    parser.add_argument("--lr_scheduler", type=LRSchedulerCallable)
    config = parser.parse_string("lr_scheduler:\n  class_path: segpipe.tasks.schedules.CosineToEnd\n")
    factory = parser.instantiate_classes(config).lr_scheduler
    task = SegmentationTask(model_kwargs={"depth": 1, "base_channels": 2}, lr_scheduler=factory)
    task.trainer = pl.Trainer(max_epochs=7, logger=False)
    scheduler = task.configure_optimizers()["lr_scheduler"]
    assert isinstance(scheduler["scheduler"], CosineToEnd) and scheduler["scheduler"].T_max == 7
    assert scheduler["interval"] == "epoch"


def test_the_length_is_counted_in_steps_when_only_max_steps_is_set():
    assert run_length(pl.Trainer(max_epochs=-1, max_steps=500, logger=False)) == (500, "step")
    with pytest.raises(SegpipeError, match=r"needs trainer\.max_epochs or trainer\.max_steps"):
        run_length(pl.Trainer(max_epochs=-1, max_steps=-1, logger=False))
    with pytest.raises(ValueError, match="length must be >= 1"):
        CosineToEnd(_optimizer()).set_run_length(0)
