"""Peak host and device memory of a real `segpipe fit` on a config (the demo by default).

    uv run python benchmarks/memory.py [--config configs/demo.yaml] [--epochs 2]

Runs ``segpipe fit --config <config> --trainer.max_epochs <epochs>`` in a subprocess (its own temporary
MLflow store and output folder) and samples, every 50 ms, the proportional set size (PSS) of the process and
of all its children (DataLoader workers) from ``/proc``: the peak of the sum is the host figure; the main
process's own high-water mark (``VmHWM``) is reported beside it. With a GPU, the device peak is
``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved`` (the allocator's pool),
written by the ``DevicePeak`` callback at the end of fit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, command_line, machine_description, publish

HEADING = "## Memory: peak host and device memory of segpipe fit"
TABLE_HEADER = (
    "| date | machine | command | config | epochs | peak PSS, process + workers | peak RSS (VmHWM), main "
    "| device allocated | device reserved |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)
INTRO = (
    "Peak memory of a real `segpipe fit` (`benchmarks/memory.py`): proportional set size (PSS) sampled every 50 ms "
    "over the process and its DataLoader workers, and the CUDA allocator's peaks when a GPU is used."
)


class DevicePeak(pl.Callback):
    """Write the CUDA allocator's peaks (bytes) to ``output`` at the end of fit (nothing on the CPU)."""

    def __init__(self, output: str) -> None:
        self.output = output

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            peaks = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}
            Path(self.output).write_text(json.dumps(peaks))


def proportional_set_size(pid: int) -> int:
    """``Pss`` of ``pid`` in bytes: its resident pages, each page shared with n processes counted 1/n."""
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return int(next(line for line in lines if line.startswith("Pss:")).split()[1]) * 1024


def tree_rss(pid: int) -> int:
    """Proportional resident bytes (PSS) of ``pid`` and all its descendants: DataLoader workers share the
    parent's pages copy-on-write after fork, so a sum of their RSS would count those pages twice."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += proportional_set_size(current)
        except (OSError, StopIteration, ValueError):
            continue
        stack.extend(children.get(current, []))
    return total


def high_water_mark(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def measure(config: Path, epochs: int, workdir: Path) -> dict[str, Any]:
    device_file = workdir / "device.json"
    cmd = [sys.executable, "-m", "segpipe.cli", "fit", "--config", str(config)]
    cmd += ["--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false"]
    cmd += ["--trainer.default_root_dir", str(workdir / "outputs"), "--test_after_fit", "false"]
    cmd += ["--trainer.logger.init_args.tracking_uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    cmd += ["--trainer.callbacks+=memory.DevicePeak", f"--trainer.callbacks.output={device_file}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, hwm = 0, 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        with contextlib.suppress(OSError):
            hwm = max(hwm, high_water_mark(process.pid))
        time.sleep(0.05)
    if process.returncode != 0:
        raise SystemExit(f"segpipe fit failed ({process.returncode}):\n{process.stderr.read()[-2000:]}")
    device = json.loads(device_file.read_text()) if device_file.exists() else {}
    return {"peak": peak, "hwm": hwm, **device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.config.resolve(), args.epochs, Path(tmp))
    gpu = torch.device("cuda") if "allocated" in result else None
    allocated = mib(result["allocated"]) if gpu else "-"
    reserved = mib(result["reserved"]) if gpu else "-"
    row = (
        f"| {dt.date.today()} | {machine_description(gpu)} | `{command_line()}` | {args.config.name} | {args.epochs} | "
        f"{mib(result['peak'])} | {mib(result['hwm'])} | {allocated} | {reserved} |"
    )
    publish(HEADING, TABLE_HEADER, [row], INTRO, record=not args.no_record)


if __name__ == "__main__":
    main()
