"""``segpipe evaluate``: score a folder of predictions against a folder of labels, as ``segpipe test`` would.

segpipe evaluate predictions/ data/labelsTs/                       # class0, class1, ... from the labels
segpipe evaluate predictions/ labels/ --labels background liver tumour --out results/ --tolerance 2
segpipe evaluate predictions/ labels/ --config configs/unet3d.yaml  # names from model.class_names

Writes ``evaluation_cases.csv``, ``evaluation_summary.csv``/``.json`` and ``evaluation_boxplots.png`` into
``--out`` (default: ``evaluation/`` beside the predictions folder) and prints the summary table. Unpaired
files and predictions off their label's grid are refused (exit 2) before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from segpipe.cli.usage import CommandParser
from segpipe.errors import SegpipeError


def configured_class_names(config: str, overrides: list[str]) -> list[str]:
    """``model.class_names`` of a fit config, else ``class0 .. class<num_classes - 1>``.

    Raises:
        ConfigError: for a config that the fit parser rejects.
    """
    from segpipe.config import model_hparams, read_config

    model = model_hparams(read_config(["--config", config, *overrides]))
    names = model.get("class_names")
    return list(names) if names else [f"class{k}" for k in range(int(model["num_classes"]))]


def main(argv: list[str]) -> int:
    """``segpipe evaluate PRED LABELS [--labels NAME ...] [--config CONFIG] [--out DIR] [--tolerance MM]``.

    Raises:
        SegpipeError: unpaired or unreadable files, a geometry mismatch, labels without a name, a bad config;
            reported by :func:`segpipe.cli.main`.
    """
    parser = CommandParser(
        prog="segpipe evaluate",
        description="Score predicted label maps against reference labels (Dice, IoU, HD95, ASD, surface Dice).",
        epilog="Files pair by case name (case_01.nii.gz with case_01.nrrd); NIfTI, NRRD, MHA/MHD, PNG, TIFF.",
    )
    parser.add_argument("predictions", help="folder of predicted label maps")
    parser.add_argument("labels", help="folder of reference label maps, one per prediction")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--labels", dest="class_names", nargs="+", metavar="NAME", help="class names, background first")
    names.add_argument("--config", help="fit config whose model.class_names (or num_classes) name the classes")
    parser.add_argument("--out", help="report folder (default: evaluation/ beside the predictions folder)")
    parser.add_argument(
        "--tolerance", type=float, default=1.0, help="surface Dice tolerance, mm for volumes, pixels for 2D (1.0)"
    )
    args, overrides = parser.parse_known_args(argv)
    if overrides and not args.config:
        raise SegpipeError(f"unrecognised arguments {' '.join(overrides)} (overrides need --config)")
    if args.tolerance <= 0:
        raise SegpipeError(f"--tolerance must be positive, got {args.tolerance}")

    from segpipe.evaluation.folder import default_output, score_folder, write_evaluation
    from segpipe.evaluation.report import print_summary

    class_names = configured_class_names(args.config, overrides) if args.config else args.class_names
    predictions = Path(args.predictions)
    rows = score_folder(predictions, Path(args.labels), class_names, args.tolerance)
    out = Path(args.out) if args.out else default_output(predictions)
    written = write_evaluation(out, rows, args.tolerance)
    console = Console(width=None if sys.stdout.isatty() else 200)
    print_summary(written.report.summary, console, title=f"Evaluation of {predictions} ({written.report.unit})")
    console.print(f"report: {out}", highlight=False)
    return 0
