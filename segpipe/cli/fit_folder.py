"""``segpipe fit DATASET``: plan and fit in one command (a dataset instead of ``--config``).

segpipe fit data/demo [--time-budget 3m] [--device-memory 24GiB] [--dims auto|2d|3d|slices] [--network unet]
    [--trainer.max_epochs 3 ...]

The plan (:mod:`segpipe.cli.plan`) is written as ``plan.yaml`` with ``fingerprint.json`` into the run's output
folder (the plan's ``trainer.default_root_dir``, else ``outputs/<dataset>``), then ``segpipe fit --config
plan.yaml`` runs with the remaining arguments as overrides; the run logs both files and the plan's key params.
With a time budget, everything this command does before the fit (fingerprint, calibration) counts against it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from segpipe.cli.plan import add_plan_arguments, make_plan, with_plan_files, write_plan_files
from segpipe.cli.usage import CommandParser

PLAN_FILE = "plan.yaml"


def main(argv: list[str]) -> int:
    """``segpipe fit DATASET [plan options] [fit overrides]``; returns 0.

    Raises:
        SegpipeError: a dataset that is missing or bad (DataError names the file), a bad plan option, or
            what ``segpipe fit`` refuses; reported by :func:`segpipe.cli.main` (nothing is written).
    """
    started = time.monotonic()
    parser = CommandParser(
        prog="segpipe fit DATASET",
        description="Plan an experiment for DATASET, write it into the run's folder and fit it.",
        epilog="Further arguments override the plan as for segpipe fit --config, e.g. --trainer.max_epochs 3",
    )
    add_plan_arguments(parser)
    options, overrides = parser.parse_known_args(argv)
    plan = make_plan(options, started_at=started)
    trainer = dict(plan.config.get("trainer") or {})
    output = Path(trainer.get("default_root_dir") or Path("outputs") / Path(options.dataset).resolve().stem)
    trainer["default_root_dir"] = str(output)
    plan_file = output / PLAN_FILE
    plan = with_plan_files(dataclasses.replace(plan, config={**plan.config, "trainer": trainer}), plan_file)
    write_plan_files(plan, plan_file)
    from segpipe.cli.fit import run_cli

    run_cli(["fit", "--config", str(plan_file), *overrides])
    return 0
