"""``segpipe check-data``: validate a whole dataset before training and print every problem in one table.

segpipe check-data data/Dataset001_Liver              # a folder: 2D or 3D layout detected
segpipe check-data data/cases.csv --num-classes 3      # a case list
segpipe check-data configs/unet3d.yaml [--data.init_args.root other]   # the configured DataModule and model

The checks are those that ``segpipe fit`` runs before training (:mod:`segpipe.data.checks`); exit code 2
when anything is wrong, 0 with a summary (cases per split, classes, channels, shapes, spacings) when not.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from segpipe.cli.usage import CommandParser
from segpipe.errors import DataError, SegpipeError

if TYPE_CHECKING:  # the data package loads MONAI, SimpleITK and nibabel: imported where a check runs
    from lightning.pytorch import LightningDataModule

    from segpipe.data.checks import DataChecks, DataReport

CONFIG_SUFFIXES = (".yaml", ".yml")
STAGES = ("fit", "validate", "test", "predict")
SPLIT_ORDER = ("train", "val", "test", "predict")


# ---- what to check -----------------------------------------------------------------------------------
def _holds(folder: Path) -> str | None:
    """``"3d"`` when ``folder`` holds volumes (files or DICOM folders), ``"2d"`` for 2D images, else None."""
    from segpipe.io.images import IMAGE_SUFFIXES
    from segpipe.io.volumes import is_dicom_series, volume_suffix

    if not folder.is_dir():
        return None
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(volume_suffix(p) or is_dicom_series(p) for p in entries):
        return "3d"
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return "2d"
    return None


def datamodule_for_folder(target: Path) -> DataChecks:
    """The DataModule that reads ``target``: :class:`VolumeDataModule` for nnU-Net/Decathlon folders,
    case lists and folders of volumes, :class:`FolderDataModule` for folders of 2D images.

    Raises:
        DataError: when ``target`` is missing or holds no known layout.
    """
    from segpipe.data.modules.folder import FolderDataModule
    from segpipe.data.modules.volumes import VolumeDataModule
    from segpipe.data.sources.case_lists import is_case_list
    from segpipe.data.sources.dataset_json import DATASET_JSON

    if is_case_list(target):
        return VolumeDataModule(root=str(target), num_workers=0)
    if not target.is_dir():
        problem = "dataset folder does not exist" if not target.exists() else "expected a folder, case list or config"
        raise DataError(target, problem)
    if (target / "imagesTr").is_dir() or (target / DATASET_JSON).exists():
        return VolumeDataModule(root=str(target), num_workers=0)
    folders = [target / "images", target / "labels", target / "masks", target / "train" / "images"]
    kinds = {_holds(folder) for folder in folders}
    if "3d" in kinds:
        return VolumeDataModule(root=str(target), num_workers=0)
    if "2d" in kinds or any(folder.is_dir() for folder in folders):
        return FolderDataModule(root=str(target), num_workers=0)
    raise DataError(
        target,
        "holds no dataset layout: images/ + masks/ or train/ + val/ (2D), images/ + labels/ or "
        "imagesTr/ + labelsTr/ (3D), or a .csv/.json case list",
    )


def datamodule_from_config(config: Path, overrides: list[str]) -> tuple[LightningDataModule, int, int]:
    """The configured DataModule (instantiated; the model is not built) and the model's
    ``num_classes`` and ``in_channels``, read by the fit parser (:mod:`segpipe.config`).

    Raises:
        ConfigError: for a config or override that the fit parser rejects.
    """
    from segpipe.config import instantiate_data, model_hparams, read_config

    parsed = read_config(["--config", str(config), *overrides])
    model = model_hparams(parsed)
    return instantiate_data(parsed), int(model["num_classes"]), int(model["in_channels"])


# ---- output ------------------------------------------------------------------------------------------
def _range(values: list[tuple[Any, ...]], fmt: str) -> str:
    low = tuple(min(v[i] for v in values) for i in range(len(values[0])))
    high = tuple(max(v[i] for v in values) for i in range(len(values[0])))
    text = "x".join(format(x, fmt) for x in low)
    return text if low == high else f"{text} .. {'x'.join(format(x, fmt) for x in high)}"


def summary_rows(report: DataReport) -> list[tuple[str, str]]:
    """The lines of the summary of a clean dataset: cases per split, classes, channels, shape, spacing."""
    order = sorted(report.split_sizes, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99)
    sizes = ", ".join(f"{split} {report.split_sizes[split]}" for split in order)
    rows = [("cases", f"{sum(report.split_sizes.values())} ({sizes})")]
    found = report.labels_found()
    declared = f"; declared: {', '.join(report.class_names)}" if report.class_names else ""
    rows.append(("classes found", (", ".join(map(str, found)) or "none (no labels)") + declared))
    if report.cases:
        rows.append(("channels", ", ".join(sorted({str(c.channels) for c in report.cases}))))
        rows.append(("shape", _range([c.shape for c in report.cases], "d")))
        spacings = [c.spacing for c in report.cases if c.spacing is not None]
        if spacings:
            rows.append(("spacing (mm)", _range(spacings, ".4g")))
    return rows


def render(report: DataReport, target: str, console: Console) -> None:
    """Print every problem as one table (file, problem), or the summary of a clean dataset."""
    if report.problems:
        console.print(f"{len(report.problems)} problems in {target}", highlight=False)
        table = Table()
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        for problem in report.problems:
            table.add_row(str(problem.path), problem.problem)
        console.print(table)
        console.print("segpipe fit refuses this dataset until these are fixed.")
        return
    console.print(f"{target}: no problems", highlight=False)
    table = Table(show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)


# ---- the command -------------------------------------------------------------------------------------
def check(
    target: str, overrides: list[str], num_classes: int | None, in_channels: int | None, stage: str
) -> DataReport:
    """Report every problem of ``target`` (folder, case list or config) for ``stage``.

    Raises:
        SegpipeError: when ``target`` cannot be checked (missing, no layout, a config that does not parse,
            a DataModule without checks).
    """
    from segpipe.data.checks import DataChecks

    path = Path(target)
    if path.suffix.lower() in CONFIG_SUFFIXES:
        if not path.is_file():
            raise DataError(path, "config file does not exist")
        datamodule, model_classes, model_channels = datamodule_from_config(path, overrides)
        num_classes = model_classes if num_classes is None else num_classes
        in_channels = model_channels if in_channels is None else in_channels
    elif overrides:
        raise SegpipeError(f"unrecognised arguments {' '.join(overrides)} (overrides need a config file)")
    else:
        datamodule = datamodule_for_folder(path)
    if not isinstance(datamodule, DataChecks):
        raise SegpipeError(f"{type(datamodule).__name__} has no data checks (segpipe's DataModules have)")
    datamodule.prepare_data()  # the demos build their folder here; a disk cache shows its own bar
    with _reading(target):
        return datamodule.report(num_classes, in_channels, stage)


def _reading(target: str) -> AbstractContextManager[Any]:
    """A spinner on stderr while the report reads every file, when stderr is a terminal (else nothing)."""
    console = Console(stderr=True)
    return console.status(f"checking {target} ...") if console.is_terminal else nullcontext()


def main(argv: list[str]) -> int:
    """``segpipe check-data TARGET [--num-classes K] [--in-channels C] [--stage fit]``; returns the exit code:
    0 for a clean dataset, 2 when the table lists problems.

    Raises:
        SegpipeError: when the target cannot be checked (see :func:`check`); reported by :func:`segpipe.cli.main`.
    """
    parser = CommandParser(
        prog="segpipe check-data",
        description="Validate a dataset before training: every problem in one table; exit code 2 if any.",
        epilog="With a config, further arguments override it as for segpipe fit, e.g. --data.init_args.root other/",
    )
    parser.add_argument("target", help="dataset folder, .csv/.json case list, or LightningCLI .yaml config")
    parser.add_argument("--num-classes", type=int, help="classes the labels must fit (default: model/dataset.json)")
    parser.add_argument("--in-channels", type=int, help="image channels (default: model/dataset.json)")
    parser.add_argument("--stage", choices=STAGES, default="fit", help="splits to check, as for that command")
    args, overrides = parser.parse_known_args(argv)
    report = check(args.target, overrides, args.num_classes, args.in_channels, args.stage)
    # Unbounded when not a terminal, so that piped output and logs keep one line per problem.
    render(report, args.target, Console(width=None if sys.stdout.isatty() else 100_000))
    return 0 if report.ok else 2
