"""Training throughput of 2 DDP processes vs 1 on the CPU, at the same global batch, 1 thread each.

    uv run python benchmarks/ddp_cpu.py [--cases 64] [--size 96] [--global-batch 8] [--epochs 3]

Each run is the real CLI (`segpipe fit`, gloo DDP for 2 processes) on generated images; the
`EpochTimer` callback times the training epochs after the first (warm-up) on rank 0. A section
"## DDP on CPU: 2 processes vs 1" is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import cpu_model

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## DDP on CPU: 2 processes vs 1"


class EpochTimer(pl.Callback):
    """Write ``{"steps": ..., "seconds": ...}`` of the training epochs after the first to ``output``."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.steps = 0
        self.seconds = 0.0
        self.start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self.seconds += time.perf_counter() - self.start
            self.steps += trainer.num_training_batches
        if trainer.is_global_zero:
            Path(self.output).write_text(json.dumps({"steps": self.steps, "seconds": self.seconds}))


def write_cases(root: Path, n: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.integers(size // 8, size // 4)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.uint8)
        image = np.clip(100 + 100 * mask + rng.normal(0, 10, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"case_{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case_{i:03d}.png")


def run(workdir: Path, processes: int, threads: int, args: argparse.Namespace) -> dict[str, float]:
    output = workdir / f"timer{processes}x{threads}.json"
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": args.epochs,
            "accelerator": "cpu",
            "devices": processes,
            "strategy": "ddp" if processes > 1 else "auto",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(workdir / "outputs"),
            "callbacks": [{"class_path": "benchmarks.ddp_cpu.EpochTimer", "init_args": {"output": str(output)}}],
        },
        "model": {
            "model": "unet",
            "in_channels": 1,
            "num_classes": 2,
            "model_kwargs": {"depth": 3, "base_channels": 16, "norm": "batch"},
        },
        "data": {
            "class_path": "segpipe.data.FolderDataModule",
            "init_args": {
                "root": str(workdir / "data"),
                "batch_size": args.global_batch // processes,
                "num_workers": 0,
            },
        },
    }
    path = workdir / f"config{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'm.db'}"}
    command = [sys.executable, "-m", "segpipe.cli", "fit", "--config", str(path), "--test_after_fit", "false"]
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(output.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=64, help="training images (8 more for validation)")
    parser.add_argument("--size", type=int, default=96, help="image height and width")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up and not timed")
    parser.add_argument("--note", default="", help="free text for the table (e.g. machine load)")
    args = parser.parse_args()
    command = "uv run python benchmarks/ddp_cpu.py " + shlex.join(sys.argv[1:])
    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_cases(workdir / "data" / "train", args.cases, args.size, seed=0)
        write_cases(workdir / "data" / "val", 8, args.size, seed=1)
        results = {}
        for processes, threads in ((1, 1), (2, 1), (1, 2)):
            r = run(workdir, processes, threads, args)
            results[processes, threads] = steps_per_s = r["steps"] / r["seconds"]
            speedup = steps_per_s / results[1, 1]
            rows.append(
                f"| {dt.date.today()} | {processes} | {threads} | {args.global_batch // processes} | "
                f"{args.global_batch} | {steps_per_s:.2f} | {steps_per_s * args.global_batch:.1f} | {speedup:.2f} | "
                f"{machine} | {args.note} |"
            )
            print(rows[-1], flush=True)
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    text = text.rstrip("\n") + (
        f"\n\n{HEADING}\n\nU-Net depth 3, base 16, batch norm, {args.cases} training images of "
        f"{args.size}x{args.size}, "
        f"global batch {args.global_batch}, gloo DDP, no data workers; epochs 2..{args.epochs} timed on rank 0. "
        f"Command: `{command}`\n\n"
        "| date | processes | threads each | batch per process | global batch | train steps/s | images/s "
        "| vs 1x1 | machine | note |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    path.write_text(text)


if __name__ == "__main__":
    main()
