"""Train each architecture's demo config and report test Dice and time per epoch.

    uv run python benchmarks/architectures.py [--configs unet dense_unet segnet fcn8s] [--max-epochs N]

Each run goes through the real CLI (`segpipe fit --config configs/<name>.yaml`) into its own
temporary MLflow store; time per epoch is the median gap between consecutive `val/dice` records.
A row per architecture is appended to docs/benchmarks.md (``--no-record`` prints it only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, append_row, command_line, machine_description

HEADING = "## Architectures on the demo (2D, CPU)"


def run(config: str, max_epochs: int | None, workdir: Path) -> dict[str, float]:
    tracking_uri = f"sqlite:///{workdir / f'{config}.db'}"
    cmd = [sys.executable, "-m", "segpipe.cli", "fit", "--config", str(ROOT / "configs" / f"{config}.yaml")]
    cmd += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(workdir / config)]
    cmd += ["--trainer.logger.init_args.tracking_uri", tracking_uri]
    if max_epochs is not None:
        # Shorten the cosine schedule with the run, so that every run ends at the same point of it.
        cmd += ["--trainer.max_epochs", str(max_epochs), "--model.lr_scheduler.init_args.T_max", str(max_epochs)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=fit_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return {**read_back(tracking_uri), "wall_s": wall}


def fit_env() -> dict[str, str]:
    """This process's environment without ``MLFLOW_TRACKING_URI``.

    segpipe lets that variable win over the config's tracking URI, and an inherited one would send every
    fit into whichever store the variable names instead of the one given on the command line.
    """
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def read_back(tracking_uri: str) -> dict[str, float]:
    """Test Dice, best validation Dice and median seconds per epoch of the one run in ``tracking_uri``.

    Uses a client bound to the store rather than ``mlflow.set_tracking_uri``, which also exports
    ``MLFLOW_TRACKING_URI`` to this process's environment (and so to the next fit's subprocess).

    Raises:
        RuntimeError: the store does not hold exactly one run.
    """
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids)
    if len(runs) != 1:
        raise RuntimeError(f"{tracking_uri}: expected one run after the fit, found {len(runs)}")
    run_ = runs[0]
    history = client.get_metric_history(run_.info.run_id, "val/dice")
    stamps = sorted(h.timestamp for h in history)
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
    return {
        "epochs": len(history),
        "best_val_dice": max((h.value for h in history), default=float("nan")),
        "test_dice": run_.data.metrics.get("test/dice_pooled", float("nan")),
        "test_gm": run_.data.metrics.get("test/dice_pooled_grey_matter", float("nan")),
        "test_wm": run_.data.metrics.get("test/dice_pooled_white_matter", float("nan")),
        "s_per_epoch": statistics.median(gaps) if gaps else float("nan"),
    }


TABLE_HEADER = (
    "| date | config | epochs | test Dice (mean fg) | test GM | test WM | best val Dice "
    "| s/epoch (train+val) | wall s | machine | command | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def record(path: Path, rows: list[str]) -> None:
    """Append ``rows`` to the table under :data:`HEADING` in ``path``, adding the heading if it is missing."""
    for row in rows:
        append_row(HEADING, TABLE_HEADER, row, doc=path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["unet", "dense_unet", "segnet", "fcn8s"])
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--note", default="", help="free text for the table (e.g. machine load)")
    parser.add_argument("--no-record", action="store_true", help="print the rows only, do not append to the doc")
    args = parser.parse_args()
    machine, command = machine_description(), command_line()
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
    if not args.no_record:
        record(ROOT / "docs" / "benchmarks.md", rows)


if __name__ == "__main__":
    main()
