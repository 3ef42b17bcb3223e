"""Time a plan's training on this machine: a few real steps and a few validation batches.

The task and the DataModule are built from the plan's config the way ``segpipe fit`` builds them (the fit
parser of :mod:`segpipe.config`), the data are checked as ``segpipe fit`` checks them, and the steps run
through a Lightning ``Trainer`` with the config's accelerator and precision and the real DataLoader, so
data loading, forward, backward and the optimiser step all count. :mod:`segpipe.planning.budget` turns the
measures into epochs and steps per epoch.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from segpipe.data.requirements import CheckedDataModule

# A fresh process's first steps run up to 2x slower than the rest (allocator, loader worker start-up): the
# demo's first four steps took 0.56/0.38/0.40/0.46 s, the next sixteen 0.28-0.33 s. Those are skipped and
# the median of the timed steps is the step time.
WARMUP_STEPS = 4
CALIBRATION_STEPS = 8
# Validation batches timed per pass (the first one pays for the loader's start, as every real pass does).
VALIDATION_BATCHES = 3


@dataclass(frozen=True)
class Calibration:
    """What a plan's training costs on this machine, in seconds (wall clock).

    Attributes:
        device: where it ran, e.g. ``cpu x 2 threads`` or ``cuda (NVIDIA H200)``.
        setup_s: parsing the config, building the task and DataModule, the data check and data setup,
            up to the first training batch.
        step_s: one training step after the warm-up (next batch from the DataLoader, forward, backward,
            optimiser), the median of the timed steps.
        val_batch_s: one validation batch (the pass's loader start spread over the timed batches).
        checkpoint_s: writing one checkpoint of the task.
        train_batches: batches of a whole training epoch.
        val_batches, test_batches: batches of one validation / test pass.
        input_shape: the first training batch's image shape ``(B, C, *spatial)``.
        training_bytes_estimate: segpipe's summary memory model for one training step at ``input_shape``.
        elapsed_s: the calibration's own wall time.
    """

    device: str
    setup_s: float
    step_s: float
    val_batch_s: float
    checkpoint_s: float
    train_batches: int
    val_batches: int
    test_batches: int
    input_shape: tuple[int, ...]
    training_bytes_estimate: int
    elapsed_s: float


class _Clock(Callback):
    """Timestamps of training batch ends and of the validation pass."""

    def __init__(self) -> None:
        self.batch_starts: list[float] = []
        self.batch_ends: list[float] = []
        self.validation: tuple[float, float] | None = None
        self.input_shape: tuple[int, ...] = ()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self.batch_starts.append(time.perf_counter())
        if not self.input_shape and isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
            self.input_shape = tuple(batch["image"].shape)

    def on_train_batch_end(self, *_: Any) -> None:
        self.batch_ends.append(time.perf_counter())

    def on_validation_epoch_start(self, *_: Any) -> None:
        self.validation = (time.perf_counter(), 0.0)

    def on_validation_epoch_end(self, *_: Any) -> None:
        if self.validation is not None:
            self.validation = (self.validation[0], time.perf_counter())


def device_name(accelerator: str) -> str:
    """``cuda (NVIDIA H200)`` when the run uses a GPU, else ``cpu x N threads``."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu x {torch.get_num_threads()} threads"


def calibrate(config: dict[str, Any], steps: int = CALIBRATION_STEPS) -> Calibration:
    """Build and train ``config`` (a complete ``segpipe fit`` config as plain data) for a few steps.

    ``WARMUP_STEPS`` untimed steps, then ``steps`` timed ones (their median is the step time); then up to
    ``VALIDATION_BATCHES`` validation
    batches and one checkpoint write. Nothing is logged and nothing is written outside a temporary folder.

    Raises:
        SegpipeError: a config the fit parser refuses, or data the model cannot use (DataError names the file).
        ValueError: ``steps`` below 1.
    """
    if steps < 1:
        raise ValueError(f"calibration needs at least 1 timed step, got {steps}")
    from segpipe.config import instantiate_data, read_config

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segpipe-calibration-") as tmp:
        config_file = Path(tmp) / "plan.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        parsed = read_config(["--config", str(config_file)])
        task, datamodule = _instantiate_task(parsed), instantiate_data(parsed)
        if isinstance(datamodule, CheckedDataModule):
            datamodule.check_for(task.requirements(), "fit")
        trainer_args = parsed.trainer
        clock = _Clock()
        common = {
            "accelerator": trainer_args.accelerator,
            "devices": 1,
            "precision": trainer_args.precision,
            "deterministic": trainer_args.deterministic,
            "benchmark": trainer_args.benchmark,
            "gradient_clip_val": trainer_args.gradient_clip_val,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": tmp,
            "callbacks": [clock],
        }
        trainer = pl.Trainer(**common, max_steps=WARMUP_STEPS + steps, limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(task, datamodule=datamodule)
        # an iterable dataset without a length has an infinite epoch: count the steps it gave
        batches = trainer.num_training_batches
        train_batches = int(batches) if math.isfinite(batches) else len(clock.batch_ends)
        validator = pl.Trainer(**common, limit_val_batches=VALIDATION_BATCHES)
        validator.validate(task, datamodule=datamodule, verbose=False)
        val_batches, timed_val = _pass_batches(datamodule, "val"), int(sum(validator.num_val_batches))
        test_batches = _pass_batches(datamodule, "test")
        checkpoint_started = time.perf_counter()
        trainer.save_checkpoint(Path(tmp) / "calibration.ckpt")
        checkpoint_s = time.perf_counter() - checkpoint_started
        memory = _training_bytes(config_file, clock.input_shape, str(trainer.precision))
    step_times = [end - before for before, end in zip(clock.batch_ends, clock.batch_ends[1:], strict=False)]
    validation = clock.validation or (0.0, 0.0)
    return Calibration(
        device=device_name(str(trainer_args.accelerator)),
        setup_s=clock.batch_starts[0] - started,
        step_s=statistics.median(step_times[WARMUP_STEPS - 1 :]),
        val_batch_s=(validation[1] - validation[0]) / max(timed_val, 1),
        checkpoint_s=checkpoint_s,
        train_batches=train_batches,
        val_batches=val_batches,
        test_batches=test_batches,
        input_shape=clock.input_shape,
        training_bytes_estimate=memory,
        elapsed_s=time.perf_counter() - started,
    )


def _instantiate_task(parsed: Any) -> pl.LightningModule:
    """The task of a parsed fit config, its optimiser and schedule factories resolved as LightningCLI does."""
    from lightning.pytorch.cli import LightningArgumentParser

    from segpipe.tasks import SegmentationTask

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(SegmentationTask, "model")
    return parser.instantiate_classes(parser.parse_object({"model": parsed.model.as_dict()})).model


def _pass_batches(datamodule: pl.LightningDataModule, split: str) -> int:
    """Batches of one whole ``split`` pass (0 when the DataModule has no such split)."""
    datasets = getattr(datamodule, "datasets", {})
    if split not in datasets:
        datamodule.setup("test" if split == "test" else "validate")
    if split not in getattr(datamodule, "datasets", {}) or len(datamodule.datasets[split]) == 0:
        return 0
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    return len(loader)


def _training_bytes(config_file: Path, input_shape: tuple[int, ...], precision: str) -> int:
    """segpipe's summary memory model of one training step (activations kept for backward, weights,
    gradients, AdamW moments) for the configured network at ``input_shape``; 0 without an image batch."""
    if not input_shape:
        return 0
    from segpipe.cli.summary import summarize_config

    shape = "x".join(map(str, input_shape))
    return int(summarize_config(["--config", str(config_file)], shape, precision).training_bytes_estimate)
