"""Read a Lightning checkpoint of :class:`segpipe.tasks.SegmentationTask` safely and rebuild its network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from segpipe.config import build_network as network_from_hparams
from segpipe.errors import CheckpointError, ExportError
from segpipe.io.checkpoints import safe_load

NET_PREFIX = "net."


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load ``path`` on the CPU with :func:`segpipe.io.checkpoints.safe_load` (``weights_only=True``).

    Checkpoints written by ``segpipe fit`` (or ``Trainer.save_checkpoint`` on a SegmentationTask) hold
    tensors and plain containers only; one that holds anything else is refused rather than unpickled.

    Raises:
        ExportError: for a missing file, a file that is not a torch checkpoint, or one holding objects
            that ``weights_only`` loading does not allow (the message names the first of them).
    """
    try:
        return safe_load(path)
    except CheckpointError as err:  # same message; export reports its own error type
        raise ExportError(str(err)) from None


def model_hparams(checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> dict[str, Any]:
    """The hyperparameters of the task's network, as SegmentationTask saved them (every init argument).

    Returns a dict with ``model``, ``spatial_dims``, ``in_channels``, ``num_classes``, ``model_kwargs``
    and ``class_names`` (``class0``, ``class1``, ... when the checkpoint has none).

    Raises:
        ExportError: if the checkpoint has no ``hyper_parameters``, no ``model`` or another network argument
            among them (not saved by SegmentationTask), or ``class_names`` does not have ``num_classes`` entries.
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
    missing = [key for key in ("spatial_dims", "in_channels", "num_classes") if key not in hparams]
    if missing:
        raise ExportError(f"{source}: the hyperparameters lack {', '.join(missing)}, which SegmentationTask saves")
    num_classes = int(hparams["num_classes"])
    names = hparams.get("class_names") or [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ExportError(f"{source}: class_names has {len(names)} names for num_classes={num_classes}")
    return {
        "model": str(hparams["model"]),
        "spatial_dims": int(hparams["spatial_dims"]),
        "in_channels": int(hparams["in_channels"]),
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
        net = network_from_hparams(hp)
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
