"""The architectures by name, their options (``model_kwargs``) read from the builders' signatures, and
the one way to build a network: options are checked before anything is built."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping

from torch import nn

from segpipe.errors import SegpipeError
from segpipe.models.dense_unet import DenseUNet, fc_densenet56, fc_densenet67, fc_densenet103
from segpipe.models.encoders import EncoderFCN, EncoderUNet
from segpipe.models.fcn import FCN, fcn8s, fcn16s, fcn32s
from segpipe.models.segnet import SegNet
from segpipe.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "dense_unet": DenseUNet,
    "fc_densenet56": fc_densenet56,
    "fc_densenet67": fc_densenet67,
    "fc_densenet103": fc_densenet103,
    "segnet": SegNet,
    "fcn": FCN,
    "fcn8s": fcn8s,
    "fcn16s": fcn16s,
    "fcn32s": fcn32s,
    "encoder_unet": EncoderUNet,
    "encoder_fcn": EncoderFCN,
}


class ModelOptionError(SegpipeError, ValueError):
    """A ``model_kwargs`` key the architecture does not take: a user error (one line, exit 2) and, for
    callers that catch bad arguments as such, a ValueError."""


TASK_ARGUMENTS = ("spatial_dims", "in_channels", "num_classes")
"""Builder arguments set by the task (``model.spatial_dims``, ...), never by ``model_kwargs``."""


def registered_name(name: str) -> str:
    """``name`` as registered in :data:`MODELS` (case and ``-``/``_`` ignored).

    Raises:
        ValueError: if ``name`` is not registered (the message lists the valid names).
    """
    key = name.lower().replace("-", "_")
    if key not in MODELS:
        close = difflib.get_close_matches(key, MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.{hint}")
    return key


def model_options(name: str) -> dict[str, object]:
    """The ``model_kwargs`` the architecture ``name`` accepts, with their defaults, in signature order.

    Raises:
        ValueError: if ``name`` is not registered.
    """
    parameters = inspect.signature(MODELS[registered_name(name)]).parameters.values()
    named = (p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return {p.name: p.default for p in named if p.name not in TASK_ARGUMENTS}


def describe_model_options() -> list[str]:
    """One line per architecture: ``name: option=default, ...`` (for help texts)."""
    lines = []
    for name in MODELS:
        options = ", ".join(f"{option}={default!r}" for option, default in model_options(name).items())
        lines.append(f"{name}: {options}")
    return lines


def check_model_options(name: str, options: Mapping[str, object]) -> None:
    """Refuse ``model_kwargs`` the architecture ``name`` does not take, before it is built.

    Raises:
        ValueError: if ``name`` is not registered.
        ModelOptionError: naming the first unknown key, the closest valid one, and every valid key with
            its default; or a key the task sets itself (``in_channels``, ...).
    """
    valid = model_options(name)
    for key in options:
        if key in TASK_ARGUMENTS:
            raise ModelOptionError(f"model_kwargs.{key}: set it as model.{key}, not inside model_kwargs")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listing = ", ".join(f"{option}={default!r}" for option, default in valid.items())
            raise ModelOptionError(
                f"model {name!r} has no option {key!r} in model_kwargs{hint}; its options, with their "
                f"defaults: {listing}"
            )


def build_model(name: str, spatial_dims: int, in_channels: int, num_classes: int, **kwargs: object) -> nn.Module:
    """Instantiate the architecture registered as ``name`` with the options ``kwargs``.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the valid names), or from the
            architecture for a bad option value.
        ModelOptionError: for an option the architecture does not take (see :func:`check_model_options`).
    """
    check_model_options(name, kwargs)
    builder = MODELS[registered_name(name)]
    return builder(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kwargs)
