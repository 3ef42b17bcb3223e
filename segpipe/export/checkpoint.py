"""Read a Lightning checkpoint of :class:`segpipe.tasks.SegmentationTask` safely and rebuild its network."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segpipe.errors import ExportError
from segpipe.models import build_model

NET_PREFIX = "net."


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load ``path`` on the CPU with ``torch.load(weights_only=True)``: tensors and plain containers only.

    Checkpoints written by ``segpipe fit`` (or ``Trainer.save_checkpoint`` on a SegmentationTask) hold
    nothing else, so no global needs allowlisting; one that does is refused rather than unpickled.

    Raises:
        ExportError: for a missing file, a file that is not a torch checkpoint, or one holding objects
            that ``weights_only`` loading does not allow (the message names the first of them).
    """
    file = Path(path)
    if not file.is_file():
        raise ExportError(f"checkpoint not found: {file}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise ExportError(f"{file}: not a readable torch checkpoint ({_weights_unpickler_error(err)})") from err
        raise ExportError(
            f"{file}: refused to load with weights_only=True: it holds a {found.group(1)} object; segpipe "
            "export reads only checkpoints of tensors and plain containers, as segpipe fit writes them"
        ) from err
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{file}: not a readable torch checkpoint ({first})") from err
    if not isinstance(checkpoint, dict):
        raise ExportError(f"{file}: expected a Lightning checkpoint (a dict), got {type(checkpoint).__name__}")
    return checkpoint


def _weights_unpickler_error(err: Exception) -> str:
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(err), re.S)
    return " ".join(found.group(1).split()) if found else type(err).__name__


def model_hparams(checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> dict[str, Any]:
    """The task's hyperparameters with SegmentationTask's defaults filled in.

    Returns a dict with ``model``, ``spatial_dims``, ``in_channels``, ``num_classes``, ``model_kwargs``
    and ``class_names`` (``class0``, ``class1``, ... when the checkpoint has none).

    Raises:
        ExportError: if the checkpoint has no ``hyper_parameters`` or no ``model`` among them (not saved by
            SegmentationTask), or ``class_names`` does not have ``num_classes`` entries.
    """
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or not hparams:
        raise ExportError(
            f"{source}: no 'hyper_parameters' in the checkpoint; export needs one written by segpipe fit "
            "(SegmentationTask), which records the architecture"
        )
    if "model" not in hparams:
        keys = ", ".join(sorted(k for k in hparams if not k.startswith("_")))
        raise ExportError(
            f"{source}: the hyperparameters name no segmentation architecture ('model'), so this is not a "
            f"SegmentationTask checkpoint (they hold: {keys})"
        )
    num_classes = int(hparams.get("num_classes", 2))
    names = hparams.get("class_names") or [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ExportError(f"{source}: class_names has {len(names)} names for num_classes={num_classes}")
    return {
        "model": str(hparams["model"]),
        "spatial_dims": int(hparams.get("spatial_dims", 2)),
        "in_channels": int(hparams.get("in_channels", 1)),
        "num_classes": num_classes,
        "model_kwargs": dict(hparams.get("model_kwargs") or {}),
        "class_names": [str(n) for n in names],
    }


def build_network(checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the task's ``net`` from the hyperparameters and load its weights; returned in eval mode.

    Raises:
        ExportError: for missing hyperparameters, an unknown architecture, options the architecture
            rejects, or weights that do not fit it.
    """
    hp = model_hparams(checkpoint, source)
    try:
        net = build_model(hp["model"], hp["spatial_dims"], hp["in_channels"], hp["num_classes"], **hp["model_kwargs"])
    except (ValueError, TypeError) as err:
        raise ExportError(f"{source}: cannot rebuild the network: {' '.join(str(err).split())}") from err
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ExportError(f"{source}: no 'state_dict' in the checkpoint")
    weights = {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
    if not weights:
        raise ExportError(f"{source}: the state_dict has no '{NET_PREFIX}*' weights of a SegmentationTask")
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ExportError(f"{source}: weights do not fit {hp['model']} {hp['model_kwargs']}: {detail}") from err
    return net.eval()
