"""Preprocessing metadata stored with an exported network: what a deployment must do to an image first.

Normalisation and patch size are read, in this order, from the checkpoint's datamodule hyperparameters
(present when the DataModule saved them), the data init args of the training config given with
``--config`` (read by the fit parser, :mod:`segpipe.config`, so the DataModule's defaults and command-line
overrides hold), or the defaults of segpipe's DataModules (``zscore`` per image or volume). 2D networks
are trained by :class:`segpipe.data.FolderDataModule`, 3D ones by :class:`segpipe.data.VolumeDataModule`;
their normalisation modes differ and are described in words for each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from segpipe.config import training_patch_size
from segpipe.errors import ExportError
from segpipe.preprocessing.normalize import Normalization
from segpipe.preprocessing.plan import PLAN_KEY

DEFAULT_NORMALIZATION = "zscore"
# What each mode does, as a deployment must repeat it (segpipe.preprocessing.normalize, data.volumes).
FORMULAS: dict[int, dict[str, str]] = {
    2: {
        "zscore": "per image and channel: (x - mean(x)) / max(std(x), 1e-8), statistics over the whole image",
        "minmax": "per image and channel: (x - min(x)) / max(max(x) - min(x), 1e-8)",
        "fixed": "per channel c: (x - mean[c]) / std[c], with the dataset statistics given here",
        "dataset": "per channel c: (x - mean[c]) / std[c], with the training set's statistics (computed) given here",
        "none": "none: the raw intensities as float32",
    },
    3: {
        "zscore": "per volume and channel: (x - mean(x)) / std(x) (population std; 0 -> 1), over the whole volume",
        "ct": "clip to window [lo, hi] (or to the percentiles given here, of the volume or of the training "
        "foreground), then (x - mean) / std with the dataset statistics given here, or per volume and channel "
        "(as zscore) when they are null",
        "none": "none: the raw intensities as float32",
    },
}


def normalization_modes(spatial_dims: int) -> tuple[str, ...]:
    """The modes the DataModule for ``spatial_dims`` accepts (2: FolderDataModule, 3: VolumeDataModule)."""
    if spatial_dims == 3:
        from segpipe.data.modules.volumes import VolumeNormalization  # monai and friends: only for 3D

        return get_args(VolumeNormalization)
    return get_args(Normalization)


def _floats(values: Any) -> list[float] | None:
    if values is None:
        return None
    return [float(v) for v in values] if isinstance(values, list | tuple) else [float(values)]


def _normalization(settings: Mapping[str, Any], source: str, spatial_dims: int) -> dict[str, Any]:
    mode = str(settings.get("normalization") or DEFAULT_NORMALIZATION)
    modes = normalization_modes(spatial_dims)
    if mode not in modes:
        raise ExportError(
            f"{source}: unknown normalization {mode!r} for a {spatial_dims}D model; choose one of {', '.join(modes)}"
        )
    info: dict[str, Any] = {"mode": mode, "formula": FORMULAS[spatial_dims][mode], "source": source}
    if spatial_dims == 3:
        ct = mode == "ct"
        info |= {
            "window": _floats(settings.get("ct_window")) if ct else None,
            "mean": _floats(settings.get("ct_mean")) if ct else None,
            "std": _floats(settings.get("ct_std")) if ct else None,
        }
        if ct and settings.get("ct_percentiles") is not None:
            info["percentiles"] = _floats(settings.get("ct_percentiles"))
            info["statistics"] = str(settings.get("ct_statistics") or "volume")
        elif ct and info["window"] is None:
            raise ExportError(f"{source}: normalization 'ct' needs ct_window [lo, hi] or ct_percentiles [lo, hi]")
        return info
    fixed = mode in ("fixed", "dataset")
    info |= {"window": None, "mean": _floats(settings.get("mean")) if fixed else None}
    info["std"] = _floats(settings.get("std")) if fixed else None
    if fixed and (info["mean"] is None or info["std"] is None):
        raise ExportError(f"{source}: normalization {mode!r} needs 'mean' and 'std'")
    return info


def preprocessing(
    checkpoint: Mapping[str, Any], data_config: Mapping[str, Any] | None, spatial_dims: int, config_name: str = ""
) -> dict[str, Any]:
    """Normalisation, patch size and sliding-window inference of the trained model, with their sources.

    Returns ``{"normalization": {mode, formula, window, mean, std, source}, "patch_size": [..] | None,
    "patch_size_source": str | None, "sliding_window": {roi, overlap, mode} | None}``. The patch size
    falls back to the task's sliding-window size (``inference_roi``).

    Raises:
        ExportError: for a normalisation mode the DataModule does not have, or one missing its values.
    """
    datamodule = checkpoint.get("datamodule_hyper_parameters")
    config_source = f"config {config_name}".strip()
    if isinstance(datamodule, Mapping) and "normalization" in datamodule:
        settings, source = datamodule, "checkpoint (datamodule hyperparameters)"
    elif data_config is not None and "normalization" in data_config:
        settings, source = data_config, config_source
    else:
        module = "VolumeDataModule" if spatial_dims == 3 else "FolderDataModule"
        settings, source = {}, f"default of {module}"

    hparams = checkpoint.get("hyper_parameters") or {}
    roi = hparams.get("inference_roi")
    window = None
    if roi is not None:
        window = {"roi": [int(r) for r in roi], "overlap": float(hparams.get("inference_overlap", 0.5))}
        window["blending"] = "gaussian"
    patch, patch_source = None, None
    for candidate, name in ((datamodule, "checkpoint"), (data_config, config_source)):
        if isinstance(candidate, Mapping) and (found := training_patch_size(candidate, spatial_dims)) is not None:
            patch, patch_source = found, name
            break
    if patch is None and window is not None:
        patch, patch_source = list(window["roi"]), "checkpoint (inference_roi)"
    return {
        "normalization": _normalization(settings, source, spatial_dims),
        "patch_size": patch,
        "patch_size_source": patch_source,
        "sliding_window": window,
    }


def stored_preprocessing_plan(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resolved volume preprocessing plan a VolumeDataModule saved in ``checkpoint`` (its state under
    the DataModule's class name holds ``preprocessing_plan``), or None for 2D models and older files."""
    for value in checkpoint.values():
        if isinstance(value, Mapping) and isinstance(value.get(PLAN_KEY), Mapping):
            return dict(value[PLAN_KEY])
    return None
