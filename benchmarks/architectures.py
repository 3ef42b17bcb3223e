"""Train each architecture's demo config and report test Dice and time per epoch.

    uv run python benchmarks/architectures.py [--configs unet dense_unet segnet fcn8s] [--max-epochs N]

Each run goes through the real CLI (`segpipe fit --config configs/<name>.yaml`) into its own
temporary MLflow store; time per epoch is the median gap between consecutive `val/dice` records.
A row per architecture is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Architectures on the demo (2D, CPU)"


def run(config: str, max_epochs: int | None, workdir: Path) -> dict[str, float]:
    db = workdir / f"{config}.db"
    cmd = [sys.executable, "-m", "segpipe.cli", "fit", "--config", str(ROOT / "configs" / f"{config}.yaml")]
    cmd += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(workdir / config)]
    cmd += ["--trainer.logger.init_args.tracking_uri", f"sqlite:///{db}"]
    if max_epochs is not None:
        # Shorten the cosine schedule with the run, so that every run ends at the same point of it.
        cmd += ["--trainer.max_epochs", str(max_epochs), "--model.lr_scheduler.init_args.T_max", str(max_epochs)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    run_ = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    history = mlflow.MlflowClient().get_metric_history(run_.info.run_id, "val/dice")
    stamps = sorted(h.timestamp for h in history)
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
    return {
        "epochs": len(history),
        "best_val_dice": max(h.value for h in history),
        "test_dice": run_.data.metrics.get("test/dice", float("nan")),
        "test_gm": run_.data.metrics.get("test/dice_grey_matter", float("nan")),
        "test_wm": run_.data.metrics.get("test/dice_white_matter", float("nan")),
        "s_per_epoch": statistics.median(gaps) if gaps else float("nan"),
        "wall_s": wall,
    }


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["unet", "dense_unet", "segnet", "fcn8s"])
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--note", default="", help="free text for the table (e.g. machine load)")
    args = parser.parse_args()
    cpu = cpu_model()
    machine = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    command = "uv run python benchmarks/architectures.py " + " ".join(sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            r = run(config, args.max_epochs, Path(tmp))
            rows.append(
                f"| {dt.date.today()} | {config} | {r['epochs']} | {r['test_dice']:.4f} | {r['test_gm']:.4f} | "
                f"{r['test_wm']:.4f} | {r['best_val_dice']:.4f} | {r['s_per_epoch']:.1f} | {r['wall_s']:.0f} | "
                f"{machine} | `{command}` | {args.note} |"
            )
            print(rows[-1], flush=True)
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if HEADING not in text:
        text += (
            f"\n{HEADING}\n\n| date | config | epochs | test Dice (mean fg) | test GM | test WM | best val Dice "
            "| s/epoch (train+val) | wall s | machine | command | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    head, _, tail = text.partition(HEADING)
    table_end = tail.find("\n\n", tail.find("|---|"))
    table_end = len(tail) if table_end == -1 else table_end
    tail = tail[:table_end].rstrip("\n") + "\n" + "\n".join(rows) + "\n" + tail[table_end:]
    path.write_text(head + HEADING + tail)


if __name__ == "__main__":
    main()
