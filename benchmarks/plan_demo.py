"""Zero-config runs on the 2D demo: `segpipe plan data/demo --time-budget B --network N`, then `segpipe fit` of
the plan, for each network; test Dice, planned vs actual time.

    uv run python benchmarks/plan_demo.py [--networks unet dense_unet segnet fcn encoder_unet] [--budget 3m]

Each fit goes through the real CLI into its own temporary MLflow store. `plan` is the wall time of the
`segpipe plan` process (fingerprint, planning, calibration), `fit` the wall time of the `segpipe fit` process
(imports, training, validation, test after fit, model logging), the figure the budget is for; `planned` and
`fit took` are the TimeBudget callback's `time/planned_s` and `time/actual_fit_s` (Lightning's fit alone).
A row per network is appended to docs/benchmarks.md (``--no-record`` prints them only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, append_row, command_line, machine_description
from architectures import fit_env

from segpipe.planning.budget import parse_duration

HEADING = "## Zero-config demo: `segpipe plan --time-budget` per network (CPU)"
TABLE_HEADER = (
    "| date | network | budget | plan (s) | planned network | epochs x steps | fit (s) | fit / budget | planned (s) "
    "| fit took (s) | test Dice (mean fg) | test GM | test WM | best val Dice | machine | command | note |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def run(network: str, budget: str, data: Path, workdir: Path) -> dict[str, object]:
    """Plan and fit ``network`` on ``data`` within ``budget``; the measures of the run."""
    plan_file = workdir / f"{network}.yaml"
    plan_cmd = [sys.executable, "-m", "segpipe.cli", "plan", str(data), "--time-budget", budget]
    plan_cmd += ["--network", network, "--out", str(plan_file)]
    start = time.perf_counter()
    subprocess.run(plan_cmd, check=True, cwd=ROOT, env=fit_env(), stdout=subprocess.DEVNULL)
    plan_s = time.perf_counter() - start
    config = yaml.safe_load(plan_file.read_text())
    tracking_uri = f"sqlite:///{workdir / f'{network}.db'}"
    fit_cmd = [sys.executable, "-m", "segpipe.cli", "fit", "--config", str(plan_file)]
    fit_cmd += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(workdir / network)]
    fit_cmd += ["--trainer.logger.init_args.tracking_uri", tracking_uri]
    start = time.perf_counter()
    subprocess.run(fit_cmd, check=True, cwd=ROOT, env=fit_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fit_s = time.perf_counter() - start
    trainer = config["trainer"]
    limit = trainer.get("limit_train_batches", 1.0)
    steps = "whole epochs" if limit == 1.0 else f"{limit} steps"
    return {
        **read_back(tracking_uri),
        "plan_s": plan_s,
        "fit_s": fit_s,
        "schedule": f"{trainer['max_epochs']} x {steps}",
        "planned_network": describe_network(config["model"]),
    }


def describe_network(model: dict[str, object]) -> str:
    kwargs = model.get("model_kwargs") or {}
    shown = ", ".join(f"{k} {v}" for k, v in kwargs.items() if k in ("depth", "base_channels", "encoder_depth"))
    return f"{model['model']} ({shown})" if shown else str(model["model"])


def read_back(tracking_uri: str) -> dict[str, float]:
    """Test and best validation Dice, planned and actual fit time of the one run in ``tracking_uri``.

    Raises:
        RuntimeError: the store does not hold exactly one run.
    """
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    if len(runs) != 1:
        raise RuntimeError(f"{tracking_uri}: expected one run after the fit, found {len(runs)}")
    metrics = runs[0].data.metrics
    nan = float("nan")
    return {
        "test_dice": metrics.get("test/dice_pooled", nan),
        "test_gm": metrics.get("test/dice_pooled_grey_matter", nan),
        "test_wm": metrics.get("test/dice_pooled_white_matter", nan),
        "best_val_dice": metrics.get("val/dice_best", nan),
        "planned_s": metrics.get("time/planned_s", nan),
        "actual_s": metrics.get("time/actual_fit_s", nan),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=["unet", "dense_unet", "segnet", "fcn", "encoder_unet"])
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="the demo folder (built if missing)")
    parser.add_argument("--note", default="", help="free text for the table (e.g. machine load)")
    parser.add_argument("--no-record", action="store_true", help="print the rows only, do not append to the doc")
    args = parser.parse_args()
    from segpipe.data.demos.mni2d import ensure_demo

    ensure_demo(args.data)
    budget_s = parse_duration(args.budget)
    machine, command = machine_description(), command_line()
    with tempfile.TemporaryDirectory() as tmp:
        for network in args.networks:
            r = run(network, args.budget, args.data, Path(tmp))
            row = (
                f"| {dt.date.today()} | {network} | {budget_s:.0f} s | {r['plan_s']:.0f} | {r['planned_network']} | "
                f"{r['schedule']} | {r['fit_s']:.0f} | {r['fit_s'] / budget_s:.2f} | {r['planned_s']:.0f} | "
                f"{r['actual_s']:.0f} | {r['test_dice']:.4f} | {r['test_gm']:.4f} | {r['test_wm']:.4f} | "
                f"{r['best_val_dice']:.4f} | {machine} | `{command}` | {args.note} |"
            )
            print(row, flush=True)
            if not args.no_record:
                append_row(HEADING, TABLE_HEADER, row)


if __name__ == "__main__":
    main()
