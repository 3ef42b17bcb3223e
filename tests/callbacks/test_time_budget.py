"""TimeBudget: the early stop before an epoch that would end past the deadline, and what it logs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from segpipe.callbacks import time_budget
from segpipe.callbacks.time_budget import TimeBudget


class Recorder:
    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append(dict(metrics))


def run_epochs(
    callback: TimeBudget, durations: list[float], monkeypatch: pytest.MonkeyPatch, val_every: int = 1
) -> SimpleNamespace:
    """Feed ``callback`` epochs of the given durations on a fake clock, validating as Lightning does (every
    ``check_val_every_n_epoch`` epochs, before ``on_train_epoch_end``); stop feeding when it stops the fit."""
    clock = [0.0]
    monkeypatch.setattr(time_budget.time, "perf_counter", lambda: clock[0])
    trainer = SimpleNamespace(should_stop=False, current_epoch=0, global_step=0, is_global_zero=True, max_epochs=5)
    trainer.loggers, trainer.sanity_checking, trainer.check_val_every_n_epoch = [Recorder()], False, val_every
    callback.on_fit_start(trainer, None)
    for epoch, duration in enumerate(durations):
        trainer.current_epoch = epoch
        callback.on_train_epoch_start(trainer, None)
        clock[0] += duration
        if (epoch + 1) % trainer.check_val_every_n_epoch == 0:
            callback.on_validation_end(trainer, None)
        callback.on_train_epoch_end(trainer, None)
        if trainer.should_stop:
            break
    callback.on_fit_end(trainer, None)
    return trainer


def test_stops_when_one_more_epoch_would_pass_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # a slow first epoch (one-off costs), then 2 s epochs: after 10 s (epoch 3) one more would end at 12 > 11
    trainer = run_epochs(TimeBudget(10, budget_seconds=12, deadline_seconds=11), [4, 2, 2, 2, 2, 2], monkeypatch)
    assert trainer.should_stop and trainer.current_epoch == 3
    logged = trainer.loggers[0].logged
    assert [m["time/epoch_s"] for m in logged if "time/epoch_s" in m] == [4, 2, 2, 2]
    assert logged[-1] == {"time/actual_fit_s": 10, "time/planned_s": 10, "time/budget_s": 12}


def test_a_slow_first_epoch_alone_does_not_stop_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 s of one-off costs in epoch 0 (the plan's epochs: 10 / 5 = 2 s), then 3 s epochs: after epoch 3, at
    # 17 s, one more would end at 20 > 18
    trainer = run_epochs(TimeBudget(10, deadline_seconds=18), [8, 3, 3, 3, 3], monkeypatch)
    assert trainer.should_stop and trainer.current_epoch == 3


def test_no_deadline_runs_every_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = run_epochs(TimeBudget(), [3, 3, 3], monkeypatch)
    assert not trainer.should_stop
    assert trainer.loggers[0].logged[-1] == {"time/actual_fit_s": 9}


def test_an_epoch_without_validation_is_followed_by_one_that_validates_before_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # validation every 3 epochs; at epoch 3 (10 s) one more would pass 11 s, but epoch 3 was not validated:
    # the cadence becomes 1, epoch 4 validates, then the fit stops (a best checkpoint exists)
    callback = TimeBudget(10, budget_seconds=12, deadline_seconds=11)
    trainer = run_epochs(callback, [4, 2, 2, 2, 2, 2], monkeypatch, val_every=3)
    assert trainer.should_stop and trainer.current_epoch == 4
    assert trainer.check_val_every_n_epoch == 1 and callback._validated_epoch == 4
