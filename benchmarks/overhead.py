"""segpipe's cost per training step over a bare PyTorch loop: same model, batches, optimiser and loss.

    uv run python benchmarks/overhead.py [--steps 40] [--warmup 5] [--repeats 3] [--config configs/demo.yaml]

The batches are drawn once from the config's DataModule (augmented training samples of the demo by
default) and kept in memory; both contenders then read them in the same order from the same kind of
DataLoader (no workers), so the data pipeline is not part of the comparison (``benchmarks/loader.py``
measures it). Contenders, alternating, ``--repeats`` times each, in this one process:

- **bare**: ``zero_grad``; ``loss = criterion(net(image), mask)``; ``backward``; ``step``, with the
  network, AdamW settings and loss that the config builds;
- **segpipe**: the real ``segpipe fit`` (``segpipe.cli.fit.run_cli``: LightningCLI, the config's Trainer,
  MLflow logger, checkpointing, progress bar and every callback), given the same batches through a
  DataModule, with validation off (the steps of one epoch are timed).

A step's time is the gap between the ends of consecutive steps (so it includes fetching the batch and
all of Lightning's per-step work); the first ``--warmup`` steps are left out, and each run's median is
taken. The ratio segpipe / bare is reported per repeat (min / median / max). Target: <= 1.05 on the CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, command_line, machine_description, publish, resolved_config

from segpipe.cli.fit import run_cli
from segpipe.losses import SegmentationLoss
from segpipe.models import build_model

HEADING = "## Overhead: segpipe fit vs a bare PyTorch loop (per training step)"
TABLE_HEADER = (
    "| date | machine | command | config | batch | steps timed x repeats | bare ms/step (median) "
    "| segpipe ms/step (median) | ratio min | ratio median | ratio max |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
)
INTRO = (
    "Steady-state time per training step of `segpipe fit` (LightningCLI, MLflow logger, checkpointing, "
    "progress bar, callbacks) over a bare PyTorch loop with the same network, in-memory batches, AdamW "
    "and loss, alternating in one process (`benchmarks/overhead.py`; its docstring says what is timed)."
)


def as_list(samples: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
    return [{"image": s["image"], "mask": s["mask"]} for s in samples]


class FixedBatches(pl.LightningDataModule):
    """Training samples saved by this script (``torch.save``), served in order; no validation data."""

    def __init__(self, path: str, batch_size: int) -> None:
        super().__init__()
        self.samples = torch.load(path, weights_only=True)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.samples, batch_size=self.batch_size, shuffle=False)


class StepTimer(pl.Callback):
    """Write the end time of every training step to ``output`` (JSON) when training ends."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.ends: list[float] = []

    def on_train_batch_end(self, *_: Any) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, *_: Any) -> None:
        Path(self.output).write_text(json.dumps(self.ends))


def median_step(ends: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :], strict=False)]
    return statistics.median(gaps)


def draw_samples(config: dict[str, Any], steps: int) -> tuple[list[dict[str, torch.Tensor]], int]:
    """``steps`` batches worth of augmented training samples from the config's DataModule, and the batch size."""
    data = config["data"]
    module_name, _, class_name = data["class_path"].rpartition(".")
    datamodule = getattr(__import__(module_name, fromlist=[class_name]), class_name)(**data.get("init_args", {}))
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    batch_size = datamodule.batch_size
    samples = [dataset[i % len(dataset)] for i in range(steps * batch_size)]
    return as_list(samples), batch_size


def bare(config: dict[str, Any], samples: list[dict[str, torch.Tensor]], batch_size: int, warmup: int) -> float:
    model_cfg = config["model"]
    torch.manual_seed(config.get("seed_everything", 0))
    net = build_model(
        model_cfg["model"],
        model_cfg.get("spatial_dims", 2),
        model_cfg["in_channels"],
        model_cfg["num_classes"],
        **model_cfg.get("model_kwargs", {}),
    )
    criterion = SegmentationLoss(model_cfg.get("loss", "dice_ce"), model_cfg["num_classes"])
    optimizer_args = model_cfg["optimizer"]["init_args"]
    optimizer = torch.optim.AdamW(net.parameters(), **optimizer_args)
    net.train()
    ends = []
    for batch in DataLoader(samples, batch_size=batch_size, shuffle=False):
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()
        ends.append(time.perf_counter())
    return median_step(ends, warmup)


def segpipe(config_path: Path, samples_path: Path, batch_size: int, workdir: Path, warmup: int, run: int) -> float:
    times = workdir / f"steps-{run}.json"
    data = {"class_path": "overhead.FixedBatches", "init_args": {"path": str(samples_path), "batch_size": batch_size}}
    run_cli(
        [
            "fit",
            "--config",
            str(config_path),
            "--data",
            json.dumps(data),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.default_root_dir",
            str(workdir / "outputs"),
            "--trainer.logger.init_args.tracking_uri",
            f"sqlite:///{workdir / 'mlflow.db'}",
            "--trainer.callbacks+=overhead.StepTimer",
            f"--trainer.callbacks.output={times}",
            "--test_after_fit",
            "false",
            "--model_logging.enabled",
            "false",
        ]
    )
    return median_step(json.loads(times.read_text()), warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (timed: steps - warmup - 1)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()

    config = resolved_config(args.config)
    samples, batch_size = draw_samples(config, args.steps)
    ratios, bare_ms, segpipe_ms = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        samples_path = workdir / "samples.pt"
        torch.save(samples, samples_path)
        for run in range(args.repeats):
            b = bare(config, samples, batch_size, args.warmup)
            s = segpipe(args.config, samples_path, batch_size, workdir, args.warmup, run)
            ratios.append(s / b)
            bare_ms.append(b * 1000)
            segpipe_ms.append(s * 1000)
            print(f"repeat {run}: bare {b * 1000:.1f} ms/step, segpipe {s * 1000:.1f} ms/step, ratio {s / b:.3f}")
    shape = "x".join(map(str, samples[0]["image"].shape))
    row = (
        f"| {dt.date.today()} | {machine_description()} | `{command_line()}` | {args.config.name} | "
        f"{batch_size}x{shape} | {args.steps - args.warmup - 1} x {args.repeats} | {statistics.median(bare_ms):.1f} | "
        f"{statistics.median(segpipe_ms):.1f} | {min(ratios):.3f} | {statistics.median(ratios):.3f} | "
        f"{max(ratios):.3f} |"
    )
    publish(HEADING, TABLE_HEADER, [row], INTRO, record=not args.no_record)


if __name__ == "__main__":
    main()
