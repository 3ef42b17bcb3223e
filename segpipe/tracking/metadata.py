"""Run metadata: git commit, package versions, hardware, data fingerprint, model size and the data splits."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from segpipe.io.atomic import write_text
from segpipe.models.summary import summarize
from segpipe.tracking.config import dataset_identity
from segpipe.tracking.logger import mlflow_logger, run_folder

SPLITS_FILE = "splits.yaml"
# DataModule attributes that decide its split, recorded beside the case names.
SPLIT_SETTINGS = ("split_seed", "val_fraction", "test_fraction", "split_file")
PACKAGES = ("segpipe", "torch", "lightning", "monai", "mlflow", "numpy", "albumentations", "torchmetrics")


def git_state(folder: Path) -> dict[str, str]:
    """``{"git.commit", "git.dirty"}`` of the repository holding ``folder``; empty outside one or without git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder, capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            continue
    return found


def hardware(trainer: pl.Trainer) -> dict[str, str]:
    info = {
        "hardware.platform": platform.platform(),
        "hardware.python": platform.python_version(),
        "hardware.cpus": str(os.cpu_count()),
        "hardware.accelerator": type(trainer.accelerator).__name__,
        "hardware.devices": str(trainer.num_devices),
        "hardware.precision": str(trainer.precision),
    }
    if torch.cuda.is_available():
        info["hardware.gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return info


def _paths(case: Any) -> list[Path]:
    values = [getattr(case, f.name) for f in dataclasses.fields(case)] if dataclasses.is_dataclass(case) else []
    flat: list[Any] = []
    for value in values:
        flat.extend(value if isinstance(value, tuple | list) else [value])
    return [v for v in flat if isinstance(v, Path)]


def data_fingerprint(splits: Mapping[str, Iterable[Any]]) -> dict[str, str]:
    """``data.fingerprint``: SHA-256 (16 hex digits) of every split's file list with sizes and mtimes, and
    ``data.n_<split>``: the case count per split.

    Cases are dataclasses whose ``Path`` fields (or tuples of paths) are the files; renaming, adding,
    removing, rewriting or moving a case between splits changes the fingerprint.
    """
    digest = hashlib.sha256()
    counts = {}
    for split in sorted(splits):
        cases = list(splits[split])
        counts[f"data.n_{split}"] = str(len(cases))
        for case in cases:
            for path in _paths(case):
                stat = path.stat()
                entry = (split, getattr(case, "name", ""), path.name, stat.st_size, stat.st_mtime_ns)
                digest.update(("\t".join(map(str, entry)) + "\n").encode())
    return {"data.fingerprint": digest.hexdigest()[:16], **counts}


def model_size(net: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, str]:
    """Parameters and multiply-adds per sample from :func:`segpipe.models.summary.summarize`, on the meta device."""
    summary = summarize(copy.deepcopy(net).to("meta"), input_shape)
    return {
        "model.params": str(summary.params),
        "model.trainable_params": str(summary.trainable_params),
        "model.macs_per_sample": str(summary.macs_per_sample),
        "model.summary_input": "x".join(map(str, input_shape)),
    }


def headline(metadata: Mapping[str, str]) -> dict[str, str]:
    """The run params among :func:`data_fingerprint` and :func:`model_size` entries, with short names:
    ``n_train``, ``n_val``, ``n_test``, ``fingerprint``, ``params_M`` (millions of parameters) and
    ``gmacs`` (10^9 multiply-adds per sample), to three significant digits; the rest stays in
    ``run/metadata.json``."""
    params = {key.removeprefix("data."): value for key, value in metadata.items() if key.startswith("data.")}
    if "model.params" in metadata:
        params["params_M"] = f"{int(metadata['model.params']) / 1e6:.3g}"
        params["gmacs"] = f"{int(metadata['model.macs_per_sample']) / 1e9:.3g}"
    return params


def split_record(datamodule: Any, splits: Mapping[str, Iterable[Any]]) -> dict[str, Any]:
    """The split as data: dataset root and layout, seed, fractions, fold (and number of folds, when
    cross-validating) or split file, then the sorted case names of each split."""
    record: dict[str, Any] = {}
    if hasattr(datamodule, "root"):
        record["root"] = str(datamodule.root)
    if hasattr(datamodule, "resolved_layout"):
        record["layout"] = str(datamodule.resolved_layout())
    for key in SPLIT_SETTINGS:
        if hasattr(datamodule, key):
            record[key] = getattr(datamodule, key)
    if getattr(datamodule, "fold", None) is not None:
        record["fold"], record["num_folds"] = datamodule.fold, datamodule.num_folds
    for split, cases in splits.items():
        record[split] = sorted(str(getattr(case, "name", case)) for case in cases)
    return record


def sample_shape(datamodule: Any) -> tuple[int, ...] | None:
    """(1, C, *spatial) of the first validation item, if the DataModule exposes its datasets."""
    datasets = getattr(datamodule, "datasets", {})
    dataset = datasets.get("val") if isinstance(datasets, dict) else None
    if dataset is None or len(dataset) == 0:
        return None
    return (1, *torch.as_tensor(dataset[0]["image"]).shape)


def as_network_input(example: torch.Tensor, hparams: Mapping[str, Any]) -> torch.Tensor:
    """A (1, C, *spatial) item as the task's network takes it: for a 2D network given a volume
    (1, C, X, Y, Z), which it scores slice by slice, the volume's middle slice along ``slice_axis``."""
    if example.ndim == 5 and hparams.get("spatial_dims") == 2:
        axis = 2 + hparams.get("slice_axis", 2)
        return example.select(axis, example.shape[axis] // 2)
    return example


DESCRIPTION_TAG = "mlflow.note.content"  # the run's Description in the MLflow UI
TEST_METRICS_NOTE = (
    "Test metrics come in two definitions. `test/dice_pooled_*` and `test/iou_pooled_*` pool the pixels of "
    "every test case before taking the ratio: one score for the whole split (`test/dice_pooled`: mean over "
    "foreground classes). `test/dice_mean_*`, `test/iou_mean_*`, `test/hd95_*_mean_*` and `test/asd_*_mean_*` "
    "are means of per-case scores over the cases where the score is defined (`reports/test_summary.csv`); "
    "distances are in mm for volumes, in pixels (`_px`) for images. Names ending in `_c<k>` (class index) and "
    "`_fg_mean` (foreground mean) compare across datasets."
)


def run_description(
    identity: Mapping[str, str], counts: Mapping[str, int], tested: str | None, segmentation: bool = True
) -> str:
    """The run's description (Markdown): dataset, split sizes, the checkpoint that was tested and, for a
    ``segmentation``, what the test metrics mean. ``identity`` as from
    :func:`segpipe.tracking.config.dataset_identity`, ``counts`` the cases per split, ``tested`` the
    checkpoint file of the test (None: not tested yet)."""
    splits = ", ".join(f"{counts.get(split, 0)} {split}" for split in ("train", "val", "test"))
    dataset = identity.get("dataset", "unnamed dataset")
    lines = [f"Dataset **{dataset}** ({identity.get('modality', 'image')}): {splits} cases."]
    if tested is None:
        lines.append("Not tested yet.")
    else:
        lines.append(f"Test metrics are those of checkpoint `{tested}`.")
        if segmentation:
            lines.append(TEST_METRICS_NOTE)
    return "\n\n".join(lines)


def split_sizes(splits: Mapping[str, Iterable[Any]]) -> dict[str, int]:
    return {split: len(list(cases)) for split, cases in splits.items()}


class RunMetadata(Callback):
    """Record what a run trained on and with.

    At the start of fit: params ``n_train``, ``n_val``, ``n_test``, ``fingerprint``, ``params_M`` and
    ``gmacs`` (:func:`headline`), tags ``git.*``, ``version.*`` and ``hardware.*``, all of it (and the
    model's trainable parameters and summary input) as ``run/metadata.json``; the data split
    (:func:`split_record`) as ``splits.yaml`` in the run's output folder and as ``run/splits.yaml``; the
    dataset as the run's input (name, fingerprint as digest, split sizes as tags) for the Datasets column
    of MLflow's runs table; and the run's description (:func:`run_description`), completed with the tested
    checkpoint at the end of a test.

    Args:
        enabled: record the metadata.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        logger = mlflow_logger(trainer)
        metadata: dict[str, str] = {}
        datamodule = trainer.datamodule
        splits = datamodule.cases() if hasattr(datamodule, "cases") else None
        if splits is not None:
            path = write_text(
                run_folder(trainer) / SPLITS_FILE, yaml.safe_dump(split_record(datamodule, splits), sort_keys=False)
            )
            if logger is not None:
                logger.log_artifact(path, "run")
            metadata.update(data_fingerprint(splits))
        if logger is None:
            return
        shape = sample_shape(datamodule)
        if shape is not None:
            shape = tuple(as_network_input(torch.empty(shape, device="meta"), pl_module.hparams).shape)
            metadata.update(model_size(getattr(pl_module, "net", pl_module), shape))
        tags = {
            **git_state(Path(__file__).resolve().parent),
            **package_versions(),
            **hardware(trainer),
        }
        logger.log_params_once(headline(metadata))
        logger.set_tags(tags)
        logger.log_text(json.dumps({"metadata": metadata, "tags": tags}, indent=2), "run/metadata.json")
        if splits is not None:
            identity = dataset_identity(getattr(datamodule, "root", None))
            counts = split_sizes(splits)
            logger.log_dataset(
                identity.get("dataset", "dataset"),
                digest=metadata["data.fingerprint"],
                source=str(Path(getattr(datamodule, "root", ".")).resolve()),
                tags={f"n_{split}": str(n) for split, n in counts.items()},
            )
            if not logger.resumed:
                logger.set_tags({DESCRIPTION_TAG: run_description(identity, counts, tested=None)})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = mlflow_logger(trainer)
        datamodule = trainer.datamodule
        if not self.enabled or not trainer.is_global_zero or logger is None or not hasattr(datamodule, "cases"):
            return
        tested = Path(trainer.ckpt_path).name if trainer.ckpt_path else "none (the weights in memory)"
        identity = dataset_identity(getattr(datamodule, "root", None))
        pooled = any(key.startswith("test/dice_pooled") for key in trainer.callback_metrics)
        description = run_description(identity, split_sizes(datamodule.cases()), tested, segmentation=pooled)
        logger.set_tags({DESCRIPTION_TAG: description})
