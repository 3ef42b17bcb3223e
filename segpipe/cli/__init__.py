"""The ``segpipe`` command: dispatch to one module per subcommand, and the one place errors are reported.

segpipe fit|validate|test|predict --config configs/demo.yaml [--trainer.max_epochs 3 ...]   (segpipe.cli.fit)
segpipe fit DATASET [--time-budget 30m ...] [--trainer.max_epochs 3 ...]                     (segpipe.cli.fit_folder)
segpipe plan DATASET [--out plan.yaml] [--time-budget 30m] [--dims auto|2d|3d|slices]       (segpipe.cli.plan)
segpipe check-data <dataset folder | cases.csv | config.yaml>                               (segpipe.cli.check_data)
segpipe summary --config configs/unet.yaml [--input 4x1x512x512]                           (segpipe.cli.summary)
segpipe export --ckpt <checkpoint> --format onnx|torchscript                               (segpipe.cli.export)
segpipe classify fit|validate|test|predict --config configs/classify_demo.yaml             (segpipe.cli.classify)
segpipe evaluate PRED LABELS [--labels NAME ...] [--config CONFIG] [--out DIR]              (segpipe.cli.evaluate)
segpipe predict --onnx model.onnx --input PATH [--output DIR] [--tta [AXIS ...]]           (segpipe.cli.predict_onnx)

This module imports nothing heavy: ``segpipe --help`` answers without loading Lightning, MONAI or MLflow, and
each subcommand loads only what it needs.
"""

from __future__ import annotations

import importlib
import signal
import sys

from segpipe.console import configure_console
from segpipe.errors import SegpipeError

DESCRIPTION = """\
segpipe: semantic segmentation of medical images (U-Net, Dense-UNet, SegNet, FCN) on Lightning.

Subcommands: fit, validate, test, predict (LightningCLI; each takes --config <yaml> and dotted
overrides such as --trainer.max_epochs 3; --print_config shows the resolved YAML), and
  check-data validate a dataset folder, case list or config's data: every problem in one table.
  summary    per-layer parameters, multiply-adds and activation memory of a configured model.
  export     a checkpoint's network as ONNX or TorchScript, with its preprocessing metadata.
  classify   fit|validate|test|predict an image classifier (a backbone for encoder_weights).
  evaluate   score a folder of predictions against labels: per-case CSV, summary, box plots.
  plan       read a dataset and decide the experiment (a config with its reasons), for a time budget.
  predict --onnx FILE --input PATH   masks from an exported ONNX file with ONNX Runtime (no checkpoint).
`segpipe fit DATASET` plans and fits in one command (a dataset folder or case list instead of --config).
Runs are logged to MLflow (sqlite:///mlflow.db unless MLFLOW_TRACKING_URI or the config says otherwise).
"""

# subcommand -> module with ``main(argv) -> int`` (the fit family: LightningCLI's own subcommands)
COMMANDS = {
    "fit": "segpipe.cli.fit",
    "validate": "segpipe.cli.fit",
    "test": "segpipe.cli.fit",
    "predict": "segpipe.cli.fit",
    "check-data": "segpipe.cli.check_data",
    "summary": "segpipe.cli.summary",
    "export": "segpipe.cli.export",
    "classify": "segpipe.cli.classify",
    "evaluate": "segpipe.cli.evaluate",
    "plan": "segpipe.cli.plan",
}
FIT_DATASET = "segpipe.cli.fit_folder"  # `segpipe fit DATASET`: plan, then fit the plan
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# `predict --onnx`: ONNX Runtime instead of a checkpoint, without Lightning
ONNX_PREDICT = "segpipe.cli.predict_onnx"
TRAINING_COMMANDS = (*LIGHTNING_SUBCOMMANDS, "classify")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segpipe`` console script; returns the exit code.

    The one error handler: every subcommand raises :class:`SegpipeError` for a user's mistake, and it is
    reported here, as one ``segpipe: error: ...`` line on stderr, with its exit code (2 unless the error
    says otherwise).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: segpipe {{{','.join(COMMANDS)}}} ...\n\n{DESCRIPTION}")
        return 0 if args else 2
    command = args[0]
    if command not in COMMANDS:
        print(f"segpipe: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    onnx = command == "predict" and any(a == "--onnx" or a.startswith("--onnx=") for a in args[1:])
    try:
        if command == "fit" and _names_dataset(args[1:]):
            configure_console()
            return int(importlib.import_module(FIT_DATASET).main(args[1:]) or 0)
        module = importlib.import_module(ONNX_PREDICT if onnx else COMMANDS[command])
        configure_console()
        if command in LIGHTNING_SUBCOMMANDS and not onnx:
            # LightningCLI reads sys.argv itself when args is None (and warns if given both).
            module.run_cli(argv)
            return 0
        return int(module.main(args[1:]) or 0)
    except SegpipeError as err:
        # one line whatever the message holds (wrapped library messages span several)
        print(f"segpipe: error: {' '.join(str(err).split())}", file=sys.stderr)
        return err.exit_code
    except _stopped_by_sigterm(command):  # Lightning's stop at an epoch's end; ResumableCheckpoint wrote last.ckpt
        print("segpipe: error: stopped by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
        return 128 + signal.SIGTERM


def _names_dataset(args: list[str]) -> bool:
    """Whether ``segpipe fit``'s first argument is a dataset (not an option): ``segpipe fit DATASET``."""
    return bool(args) and not args[0].startswith("-")


def _stopped_by_sigterm(command: str) -> tuple[type[BaseException], ...]:
    """Lightning's SIGTERM exception for the commands that train; none (``except ()`` catches nothing) for
    the others, so that their ``--help`` and runs load no Lightning."""
    if command not in TRAINING_COMMANDS:
        return ()
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return (SIGTERMException,)
