"""``segpipe plan DATASET``: read a dataset, decide the experiment, write it as a config with its reasons.

segpipe plan data/demo [--out plan.yaml] [--time-budget 30m] [--device-memory 24GiB] [--dims auto|2d|3d|slices]
    [--network unet] [--layout auto]

The fingerprint and the decisions are :mod:`segpipe.planning`'s; with ``--time-budget`` a short calibration on
this machine sets the epochs and steps (:mod:`segpipe.planning.budget`). The plan file runs as is with
``segpipe fit --config plan.yaml``; ``fingerprint.json`` is written beside it, and the run logs both to MLflow.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segpipe.cli.usage import CommandParser
from segpipe.errors import DataError, SegpipeError

if TYPE_CHECKING:
    from segpipe.planning.planner import ExperimentPlan

DIMS = ("auto", "2d", "3d", "slices")
FINGERPRINT_FILE = "fingerprint.json"
PLAN_CALLBACK = "segpipe.tracking.plan_artifacts.LogPlan"
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?i?b?)")


def parse_size(text: str) -> int:
    """Bytes of ``24GiB``, ``8GB``, ``512MiB`` or ``1000`` (binary units with ``i``, decimal without).

    Raises:
        SegpipeError: for anything else.
    """
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or float(match.group("number")) <= 0:
        raise SegpipeError(f"device memory {text!r}: expected a size such as 24GiB, 16GB or 512MiB")
    unit = match.group("unit").removesuffix("b")
    prefix = unit.removesuffix("i")
    scale = (1024 if unit.endswith("i") else 1000) ** " kmgt".index(prefix or " ")
    return int(float(match.group("number")) * scale)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a plan, shared by ``segpipe plan`` and ``segpipe fit DATASET``."""
    parser.add_argument("dataset", help="dataset folder (any layout segpipe reads) or case list (CSV/JSON)")
    parser.add_argument("--time-budget", help="wall-clock time of the fit on this machine, e.g. 90s, 30m, 1h30m")
    parser.add_argument("--device-memory", help="memory to plan for, e.g. 24GiB (default: this machine's)")
    parser.add_argument("--dims", choices=DIMS, default="auto", help="2D, 3D or 2D slices of volumes (default: auto)")
    parser.add_argument("--network", default="unet", help="architecture: unet, dense_unet, segnet, fcn, ...")
    parser.add_argument("--layout", default="auto", help="dataset layout (default: detected)")


def make_plan(options: argparse.Namespace, started_at: float | None = None, startup_s: float = 0.0) -> ExperimentPlan:
    """Fingerprint the dataset, decide the plan and, with ``options.time_budget``, fit it to the budget.

    ``started_at`` (``time.monotonic()``) makes the time spent so far count against the budget (plan and fit
    in one command); ``startup_s`` is a later fit process's import time.

    Raises:
        SegpipeError: a bad dataset (DataError names the file), budget, size or network.
    """
    from segpipe.planning.budget import parse_duration, plan_within_budget

    budget = parse_duration(options.time_budget) if options.time_budget else None
    memory = parse_size(options.device_memory) if options.device_memory else None
    if not Path(options.dataset).exists():
        raise DataError(options.dataset, "no such dataset folder or case list")
    from segpipe.planning.fingerprint import dataset_fingerprint
    from segpipe.planning.planner import plan_experiment

    fingerprint = dataset_fingerprint(options.dataset, layout=options.layout)
    # PlanError (a SegpipeError): an unknown network, dims the data cannot have, no patch within the memory
    if budget is None:
        return plan_experiment(fingerprint, dims=options.dims, network=options.network, device_memory=memory)
    return plan_within_budget(
        fingerprint, budget, options.dims, options.network, memory, started_at=started_at, startup_s=startup_s
    )


def with_plan_files(plan: ExperimentPlan, plan_file: Path) -> ExperimentPlan:
    """``plan`` whose run logs ``plan_file``, the fingerprint beside it and the key params to MLflow, and
    checks its first step's memory (a budgeted plan's TimeBudget has the estimate already)."""
    import dataclasses

    from segpipe.planning.budget import TIME_BUDGET_CALLBACK

    config = plan.config
    trainer = dict(config.get("trainer") or {})
    callbacks = [c for c in trainer.get("callbacks") or [] if c.get("class_path") != PLAN_CALLBACK]
    files = [str(plan_file), str(plan_file.with_name(FINGERPRINT_FILE))]
    callbacks.append({"class_path": PLAN_CALLBACK, "init_args": {"files": files, "params": plan_params(config)}})
    if not any(c.get("class_path") == TIME_BUDGET_CALLBACK for c in callbacks):
        estimate = memory_estimate(config)
        callbacks.append({"class_path": TIME_BUDGET_CALLBACK, "init_args": {"planned_memory_bytes": estimate}})
    trainer["callbacks"] = callbacks
    return dataclasses.replace(plan, config={**config, "trainer": trainer})


def plan_dims(config: dict[str, Any]) -> str:
    """``2d``, ``3d`` or ``slices`` (a 2D network trained on slices of volumes)."""
    data_args = (config.get("data") or {}).get("init_args") or {}
    if data_args.get("training_mode") == "slices":
        return "slices"
    return f"{int(config['model'].get('spatial_dims', 2))}d"


def plan_params(config: dict[str, Any]) -> dict[str, str]:
    """The key params of a plan for MLflow: ``plan/dims``, ``plan/patch_size``, ``plan/batch_size``,
    ``plan/network`` and, for a budgeted plan, ``plan/budget_s``."""
    from segpipe.config import training_patch_size
    from segpipe.planning.budget import TIME_BUDGET_CALLBACK
    from segpipe.tracking.config import network_and_options, network_size

    model, data_args = config["model"], (config.get("data") or {}).get("init_args") or {}
    patch = training_patch_size(data_args, 3 if plan_dims(config) == "3d" else 2)
    network, kwargs = network_and_options(model)
    params = {
        "plan/dims": plan_dims(config),
        "plan/patch_size": "x".join(map(str, patch)) if patch else "whole images",
        "plan/batch_size": str(data_args.get("batch_size")),
        "plan/network": f"{network} {network_size(kwargs)}".strip(),
    }
    budget = _callback_args(config, TIME_BUDGET_CALLBACK).get("budget_seconds")
    if budget:
        params["plan/budget_s"] = f"{float(budget):g}"
    return params


def _callback_args(config: dict[str, Any], class_path: str) -> dict[str, Any]:
    """The ``init_args`` of the config's callback ``class_path`` (empty when it has none)."""
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        if callback.get("class_path") == class_path:
            return dict(callback.get("init_args") or {})
    return {}


def memory_estimate(config: dict[str, Any]) -> int:
    """segpipe's summary memory model of one training step of ``config`` (batch x channels x patch)."""
    import tempfile

    import yaml

    from segpipe.cli.summary import summarize_config

    precision = str((config.get("trainer") or {}).get("precision") or "32")
    with tempfile.TemporaryDirectory(prefix="segpipe-plan-") as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return int(summarize_config(["--config", str(path)], None, precision).training_bytes_estimate)


def write_plan_files(plan: ExperimentPlan, plan_file: Path) -> None:
    """``plan_file`` (the config with its reasons) and ``fingerprint.json`` beside it, each atomically."""
    from segpipe.io.atomic import write_text
    from segpipe.planning.plan_yaml import write_plan

    write_text(plan_file.with_name(FINGERPRINT_FILE), json.dumps(plan.fingerprint.to_dict(), indent=1) + "\n")
    write_plan(plan, plan_file)


def print_summary(plan: ExperimentPlan, plan_file: Path) -> None:
    """The plan's headline decisions as a Rich table, and where the file is."""
    from rich.console import Console
    from rich.table import Table

    from segpipe.planning.budget import TIME_BUDGET_CALLBACK

    config = plan.config
    trainer = config.get("trainer") or {}
    params = plan_params(config)
    steps = trainer.get("limit_train_batches")
    budget = _callback_args(config, TIME_BUDGET_CALLBACK)
    planned = budget.get("planned_seconds")
    rows = {
        "dims": params["plan/dims"],
        "patch": params["plan/patch_size"],
        "batch": params["plan/batch_size"],
        "network": params["plan/network"],
        "epochs x steps": f"{trainer.get('max_epochs')} x {steps if isinstance(steps, int) else 'whole epochs'}",
        "estimated memory": f"{budget.get('planned_memory_bytes', 0) / 2**20:.1f} MiB per training step",
        "planned time": f"{planned:.0f} s of {budget['budget_seconds']:g} s" if planned else "no time budget",
    }
    table = Table(title=f"segpipe plan of {plan.fingerprint.to_dict().get('root', '')}")
    table.add_column("decision")
    table.add_column("value")
    for name, value in rows.items():
        table.add_row(name, value)
    console = Console()
    console.print(table)
    fingerprint = plan_file.with_name(FINGERPRINT_FILE)
    console.print(f"wrote {plan_file} and {fingerprint}; run it with: segpipe fit --config {plan_file}")


def main(argv: list[str]) -> int:
    """``segpipe plan DATASET [options]``; returns 0.

    Raises:
        SegpipeError: see :func:`make_plan`; reported by :func:`segpipe.cli.main`.
    """
    started = time.monotonic()
    parser = CommandParser(prog="segpipe plan", description="Plan an experiment for a dataset: a config to fit.")
    add_plan_arguments(parser)
    parser.add_argument("--out", default="plan.yaml", help="plan file to write (default: plan.yaml)")
    options = parser.parse_args(argv)
    import segpipe.cli.fit  # noqa: F401 (what a later `segpipe fit` imports before it builds anything: timed)

    plan_file = Path(options.out)
    plan = with_plan_files(make_plan(options, startup_s=time.monotonic() - started), plan_file)
    write_plan_files(plan, plan_file)
    print_summary(plan, plan_file)
    return 0
