"""The time budget: durations, the schedule chosen from a calibration, and a calibrated fit that lands in it."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from builders import plan_of, tiny_config, write_dataset

import segpipe.planning.budget as budget_module
from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.planning.budget import choose_schedule, fit_to_budget, max_time_text, parse_duration
from segpipe.planning.calibration import Calibration
from segpipe.planning.plan_yaml import write_plan


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("1.5h", 5400), ("120", 120), ("2h5s", 7205)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30 minutes", "0s", "1d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(SegpipeError, match="time budget"):
        parse_duration(text)


def test_max_time_text() -> None:
    assert max_time_text(3725.2) == "00:01:02:06"


def calibration(**changes: float) -> Calibration:
    values = {
        "device": "cpu x 2 threads",
        "setup_s": 2.0,
        "step_s": 0.5,
        "val_batch_s": 0.25,
        "checkpoint_s": 0.1,
        "train_batches": 20,
        "val_batches": 4,
        "test_batches": 4,
        "input_shape": (4, 1, 32, 32),
        "training_bytes_estimate": 1000,
        "elapsed_s": 5.0,
        **changes,
    }
    return Calibration(**values)


def test_whole_epochs_when_the_budget_allows_many() -> None:
    # available: 300 x 0.9 - (2 setup + 1 test) - 0.5 sanity = 266.5 s; epoch 10 s + validation 1.2 s
    schedule = choose_schedule(calibration(), 300)
    assert (schedule.steps_per_epoch, schedule.val_every, schedule.epochs) == (20, 1, 23)
    assert schedule.fixed_s == pytest.approx(3.0)
    assert schedule.planned_fit_s == pytest.approx(0.5 + 23 * 10 + 23 * 1.2)
    assert schedule.planned_fit_s + schedule.fixed_s <= 300 * 0.9


def test_short_epochs_for_enough_validations() -> None:
    # available 50 x 0.9 - 3.5 = 41.5 s: 3 whole epochs only, so epochs of (41.5/5 - 1.2) / 0.5 = 14 steps
    schedule = choose_schedule(calibration(), 50)
    assert (schedule.steps_per_epoch, schedule.epochs) == (14, 5)


def test_validation_every_few_epochs_when_it_is_slow() -> None:
    # a validation of 4 x 3 s + 0.2 s against epochs of 10 s: every 4 epochs keeps it at most a quarter
    schedule = choose_schedule(calibration(val_batch_s=3.0, test_batches=0), 1000)
    assert schedule.val_every == 4
    assert schedule.epochs % 4 == 0
    assert schedule.planned_fit_s + schedule.fixed_s <= 900


def test_spent_time_counts() -> None:
    assert choose_schedule(calibration(), 300, spent_s=100).epochs < choose_schedule(calibration(), 300).epochs


def test_too_short_a_budget_is_refused() -> None:
    with pytest.raises(SegpipeError, match=r"too short .* at least \d+ s"):
        choose_schedule(calibration(), 4)


@pytest.mark.slow
def test_calibrated_fit_lands_within_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    budget = 20.0
    plan = fit_to_budget(plan_of(tiny_config(write_dataset(tmp_path / "data", n=16))), budget)
    trainer = plan.config["trainer"]
    assert trainer["max_time"] == max_time_text(budget * 1.05)
    assert "calibrated" in plan.reasons["trainer.max_epochs"]
    write_plan(plan, tmp_path / "plan.yaml")

    assert main(["fit", "--config", str(tmp_path / "plan.yaml")]) == 0

    run = mlflow.search_runs(experiment_names=["tests"], output_format="list")[0]
    metrics = run.data.metrics
    planned = trainer["callbacks"][-1]["init_args"]["planned_seconds"]
    assert metrics["time/planned_s"] == pytest.approx(planned)
    assert metrics["time/budget_s"] == budget
    # Lightning's fit (sanity check, training, validation, checkpoints), timed by the plan's TimeBudget callback
    assert 0.5 * budget <= metrics["time/actual_fit_s"] <= 1.1 * budget
    assert metrics["memory/planned_bytes"] > 0
    assert "memory/first_step_bytes" in metrics


def _steps_by_dims(steps: dict[int, int]):
    """A stand-in for the calibration: each plan gets ``steps[spatial_dims]`` training steps in the budget."""

    def fitted(plan, budget_seconds, calibration_steps, started_at, startup_s):
        total = steps[plan.config["model"]["spatial_dims"]]
        return plan, budget_module.Schedule(total, 1, 1, budget_seconds * 0.8, 0.0)

    return fitted


@pytest.mark.parametrize(("steps_3d", "dims"), [(36, 2), (400, 3)])
def test_a_budget_too_short_for_3d_training_plans_2d_slices(steps_3d: int, dims: int, monkeypatch):
    from test_planner import GiB, fingerprint

    monkeypatch.setattr(budget_module, "_fit_to_budget", _steps_by_dims({3: steps_3d, 2: 900}))
    plan = budget_module.plan_within_budget(fingerprint([140, 160, 12], [1.0, 1.0, 1.0]), 180, device_memory=8 * GiB)
    assert plan.config["model"]["spatial_dims"] == dims
    if dims == 2:
        assert plan.config["data"]["init_args"]["training_mode"] == "slices"
        assert plan.reasons["data.init_args.training_mode"] == (
            "time budget: the 3D plan trains 36 steps (< 250); 2D slices train 900 (both calibrated here)"
        )
    # dims given by the user are kept whatever the budget
    forced = budget_module.plan_within_budget(fingerprint([140, 160, 12], [1.0] * 3), 180, "3d", device_memory=8 * GiB)
    assert forced.config["model"]["spatial_dims"] == 3


def test_prefer_slices_only_below_the_3d_minimum_and_with_more_steps():
    assert budget_module.prefer_slices(36, 900)
    assert not budget_module.prefer_slices(36, 30)
    assert not budget_module.prefer_slices(budget_module.MIN_3D_STEPS, 10_000)
