"""Fit a plan to a time budget: epochs, steps per epoch and validation cadence from a calibration.

The budget covers one ``segpipe fit`` of the plan on this machine: its start-up (building the task and
DataModule, the data check), the sanity check, training, validation with its checkpoint writes and the test
after fit. The fixed costs are subtracted, a safety margin is kept, and the rest is split into epochs so
that validation takes at most a quarter of the time. ``trainer.max_time`` stops a fit that runs slower than
calibrated shortly after the budget (Lightning's Timer).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segpipe.errors import SegpipeError
from segpipe.planning.calibration import CALIBRATION_STEPS, Calibration, calibrate

if TYPE_CHECKING:
    from segpipe.planning.fingerprint import DatasetFingerprint
    from segpipe.planning.planner import ExperimentPlan

SAFETY_MARGIN = 0.10
MAX_TIME_FACTOR = 1.05  # the hard stop: 5% above the budget
VALIDATION_SHARE = 0.25  # validation (with its checkpoint writes) at most this share of the training time
MIN_VALIDATIONS = 5  # model selection on the best epoch needs a few validation points
CHECKPOINTS_PER_VALIDATION = 2  # last.ckpt and, when val/dice improved, the best checkpoint
SANITY_VAL_BATCHES = 2  # Lightning's num_sanity_val_steps default
# Fewest training steps a 3D plan should get in a budget before 2D slices are chosen instead: on the MNI152
# slabs (benchmarks/vs_nnunet.py, 3 minutes on 2 CPU cores) whole-slab 3D patches trained 36 steps to Dice
# 0.53, where slices of the same slabs train hundreds of steps.
MIN_3D_STEPS = 250
TIME_BUDGET_CALLBACK = "segpipe.callbacks.TimeBudget"
_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``90s``, ``30m``, ``1h30m``, ``1.5h`` or ``120`` (seconds).

    Raises:
        SegpipeError: for anything else, or a duration that is not positive.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None:
        raise SegpipeError(f"time budget {text!r}: expected a duration such as 90s, 30m or 1h30m")
    hours, minutes, seconds = (float(match.group(unit) or 0) for unit in "hms")
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise SegpipeError(f"time budget {text!r}: must be more than 0 seconds")
    return total


def max_time_text(seconds: float) -> str:
    """Lightning's ``max_time`` ``DD:HH:MM:SS`` for ``seconds`` (rounded up)."""
    whole = math.ceil(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


@dataclass(frozen=True)
class Schedule:
    """How long a fit runs: ``epochs`` of ``steps_per_epoch`` steps, validating every ``val_every`` epochs.

    ``planned_fit_s`` is Lightning's fit (sanity check, training, validation, checkpoint writes);
    ``fixed_s`` the costs around it that the budget also pays (start-up, test after fit, the calibration
    when it runs in the same command).
    """

    epochs: int
    steps_per_epoch: int
    val_every: int
    planned_fit_s: float
    fixed_s: float


def fixed_costs(cal: Calibration, test_after_fit: bool) -> float:
    """Seconds a ``segpipe fit`` spends outside Lightning's fit: start-up and the test after fit (per batch as
    validation)."""
    return cal.setup_s + (cal.test_batches * cal.val_batch_s if test_after_fit else 0.0)


def choose_schedule(cal: Calibration, budget_s: float, spent_s: float = 0.0, test_after_fit: bool = True) -> Schedule:
    """Epochs, steps per epoch and validation cadence that end within ``budget_s`` less the margin.

    Whole epochs first (every training batch seen); shorter epochs only when whole ones would allow fewer
    than ``MIN_VALIDATIONS`` validations, but never so short that validation exceeds ``VALIDATION_SHARE``.

    Raises:
        SegpipeError: a budget that leaves no time for one training step and one validation.
    """
    fixed = fixed_costs(cal, test_after_fit) + spent_s
    sanity = min(SANITY_VAL_BATCHES, cal.val_batches) * cal.val_batch_s
    available = budget_s * (1 - SAFETY_MARGIN) - fixed - sanity
    validation = cal.val_batches * cal.val_batch_s + CHECKPOINTS_PER_VALIDATION * cal.checkpoint_s
    share = VALIDATION_SHARE / (1 - VALIDATION_SHARE)  # validation time per unit of training time
    if available < cal.step_s + validation:
        needed = (fixed + sanity + cal.step_s + validation) / (1 - SAFETY_MARGIN)
        raise SegpipeError(
            f"time budget {budget_s:.0f} s is too short for this plan on {cal.device}: one step and one "
            f"validation after the fixed costs ({fixed:.0f} s) need at least {math.ceil(needed)} s"
        )
    steps, epoch_s = max(cal.train_batches, 1), max(cal.train_batches, 1) * cal.step_s
    val_every = max(1, math.ceil(validation / (share * epoch_s)))
    cycles = int(available // (val_every * epoch_s + validation))
    if cycles < MIN_VALIDATIONS and val_every == 1:
        # Shorter epochs for more validation points, each still long enough to keep validation's share.
        shortest = max(1, math.ceil(validation / (share * cal.step_s)))
        wanted = int((available / MIN_VALIDATIONS - validation) // cal.step_s)
        steps = max(1, min(steps, max(shortest, wanted)))
        cycles = int(available // (steps * cal.step_s + validation))
    if cycles < 1:  # one validation, as many steps as fit before it
        steps, cycles = max(1, int((available - validation) // (val_every * cal.step_s))), 1
    epochs = cycles * val_every
    planned = sanity + epochs * steps * cal.step_s + cycles * validation
    return Schedule(epochs, steps, val_every, planned, fixed)


def fit_to_budget(
    plan: ExperimentPlan,
    budget_seconds: float,
    calibration_steps: int = CALIBRATION_STEPS,
    *,
    started_at: float | None = None,
    startup_s: float = 0.0,
) -> ExperimentPlan:
    """``plan`` with ``trainer.max_epochs``, ``limit_train_batches``, ``check_val_every_n_epoch`` and
    ``max_time`` set from a calibration on this machine so that its fit ends within ``budget_seconds``.

    Args:
        plan: the plan to time (its config must run with ``segpipe fit --config``).
        budget_seconds: wall-clock seconds for the fit.
        calibration_steps: timed training steps (after the warm-up steps).
        started_at: ``time.monotonic()`` when the budget started running, for a command that plans and fits
            in one go (``segpipe fit DATASET``): what it spent before the fit (fingerprint, calibration)
            counts against the budget. None: the plan is for a later ``segpipe fit --config``.
        startup_s: seconds a new ``segpipe fit`` process spends importing before it builds anything.

    The plan's config also gets the :class:`~segpipe.callbacks.TimeBudget` callback with the planned time and
    memory, and each choice its reason.

    Raises:
        SegpipeError: a budget too short for one step and one validation, or data the model cannot use.
    """
    return _fit_to_budget(plan, budget_seconds, calibration_steps, started_at, startup_s)[0]


def _fit_to_budget(
    plan: ExperimentPlan, budget_seconds: float, calibration_steps: int, started_at: float | None, startup_s: float
) -> tuple[ExperimentPlan, Schedule]:
    from segpipe.planning.data_config import with_augmentation

    test_after_fit = bool(plan.config.get("test_after_fit", True))
    config = plan.config
    for _ in range(2):  # the augmentation suits the run's length; a changed one is calibrated once more
        cal = calibrate(config, calibration_steps)
        spent = time.monotonic() - started_at if started_at is not None else 0.0
        schedule = choose_schedule(cal, budget_seconds, spent + startup_s, test_after_fit)
        epochs = schedule.epochs * schedule.steps_per_epoch / max(cal.train_batches, 1)
        augmented, augmentation_reasons = with_augmentation(config, plan.fingerprint, epochs)
        changed = augmented["data"] != config["data"]
        config = augmented
        if not changed:
            break
    config = _with_schedule(config, schedule, cal, budget_seconds)
    reasons = budget_reasons(cal, schedule, budget_seconds, spent if started_at is not None else None, startup_s)
    reasons = {**plan.reasons, **augmentation_reasons, **reasons}
    return dataclasses.replace(plan, config=config, reasons=reasons), schedule


def prefer_slices(steps_3d: int, steps_slices: int) -> bool:
    """Whether a budget is better spent on 2D slices than on 3D patches: when the 3D plan trains fewer than
    :data:`MIN_3D_STEPS` steps and the slices plan more than it."""
    return steps_3d < MIN_3D_STEPS and steps_slices > steps_3d


def plan_within_budget(
    fingerprint: DatasetFingerprint,
    budget_seconds: float,
    dims: str = "auto",
    network: str = "unet",
    device_memory: int | None = None,
    *,
    started_at: float | None = None,
    startup_s: float = 0.0,
) -> ExperimentPlan:
    """The plan of :func:`~segpipe.planning.planner.plan_experiment` fitted to ``budget_seconds`` (see
    :func:`fit_to_budget`); with ``dims: auto``, volumes whose 3D plan gets too few training steps in the
    budget are planned as 2D slices instead (:func:`prefer_slices`; both plans are calibrated).

    Raises:
        SegpipeError: as :func:`fit_to_budget` and ``plan_experiment``.
    """
    from segpipe.planning.planner import PlanError, plan_experiment

    plan = plan_experiment(fingerprint, dims=dims, network=network, device_memory=device_memory)
    fitted, schedule = _fit_to_budget(plan, budget_seconds, CALIBRATION_STEPS, started_at, startup_s)
    if dims != "auto" or plan.config["model"]["spatial_dims"] != 3:
        return fitted
    steps_3d = schedule.epochs * schedule.steps_per_epoch
    if steps_3d >= MIN_3D_STEPS:
        return fitted
    try:
        slices = plan_experiment(fingerprint, dims="slices", network=network, device_memory=device_memory)
        fitted_slices, slice_schedule = _fit_to_budget(slices, budget_seconds, CALIBRATION_STEPS, started_at, startup_s)
    except PlanError:
        return fitted
    steps_slices = slice_schedule.epochs * slice_schedule.steps_per_epoch
    if not prefer_slices(steps_3d, steps_slices):
        return fitted
    reason = (
        f"time budget: the 3D plan trains {steps_3d} steps (< {MIN_3D_STEPS}); 2D slices train {steps_slices} "
        "(both calibrated here)"
    )
    return dataclasses.replace(fitted_slices, reasons={**fitted_slices.reasons, "data.init_args.training_mode": reason})


def _with_schedule(config: dict[str, Any], schedule: Schedule, cal: Calibration, budget_s: float) -> dict[str, Any]:
    """A copy of ``config`` running ``schedule``, with the budget's callback and hard stop."""
    trainer = dict(config.get("trainer") or {})
    trainer["max_epochs"] = schedule.epochs
    trainer["limit_train_batches"] = schedule.steps_per_epoch if schedule.steps_per_epoch < cal.train_batches else 1.0
    trainer["check_val_every_n_epoch"] = schedule.val_every
    trainer["max_time"] = max_time_text(budget_s * MAX_TIME_FACTOR)
    trainer["log_every_n_steps"] = max(1, min(int(trainer.get("log_every_n_steps") or 50), schedule.steps_per_epoch))
    callbacks = [c for c in trainer.get("callbacks") or [] if (c or {}).get("class_path") != TIME_BUDGET_CALLBACK]
    callbacks.append(
        {
            "class_path": TIME_BUDGET_CALLBACK,
            "init_args": {
                "planned_seconds": round(schedule.planned_fit_s, 1),
                "budget_seconds": round(budget_s, 1),
                # half of the safety margin is left to an epoch slower than the others
                "deadline_seconds": round(budget_s * (1 - SAFETY_MARGIN / 2) - schedule.fixed_s, 1),
                "planned_memory_bytes": cal.training_bytes_estimate,
            },
        }
    )
    trainer["callbacks"] = callbacks
    return {**config, "trainer": trainer}


def budget_reasons(
    cal: Calibration, schedule: Schedule, budget_s: float, spent_s: float | None = None, startup_s: float = 0.0
) -> dict[str, str]:
    """One line per key that the budget set, saying what was measured and how it was chosen."""
    calibration = (
        f"calibrated: {cal.step_s:.3f} s/step on {cal.device} ({cal.train_batches} batches per whole epoch), "
        f"validation {cal.val_batches} batches x {cal.val_batch_s:.3f} s, checkpoint {cal.checkpoint_s:.2f} s"
    )
    spent = f"{spent_s:.0f} s of planning and calibration" if spent_s is not None else "calibration not counted"
    imports = f" + imports {startup_s:.0f} s" if startup_s else ""
    fixed = f"fixed {schedule.fixed_s:.0f} s (start-up {cal.setup_s:.0f} s{imports}, test after fit; {spent})"
    planned = schedule.planned_fit_s
    return {
        "trainer.max_epochs": f"{calibration}; budget {budget_s:.0f} s - {SAFETY_MARGIN:.0%} margin - {fixed}",
        "trainer.limit_train_batches": (
            f"{schedule.steps_per_epoch} steps per epoch of {cal.train_batches}: fit planned at {planned:.0f} s"
        ),
        "trainer.check_val_every_n_epoch": (
            f"validation every {schedule.val_every} epoch(s): at most {VALIDATION_SHARE:.0%} of the time, "
            f"at least {MIN_VALIDATIONS} validations where the budget allows"
        ),
        "trainer.max_time": f"hard stop {MAX_TIME_FACTOR - 1:.0%} above the budget if this machine slows down",
        "trainer.callbacks": (
            f"TimeBudget logs planned vs actual time and the first step's memory "
            f"(estimated {cal.training_bytes_estimate / 2**20:.1f} MiB for input {list(cal.input_shape)})"
        ),
    }
