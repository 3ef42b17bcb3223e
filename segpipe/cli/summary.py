"""``segpipe summary``: per-layer parameters, multiply-adds and activation memory of a configured model.

segpipe summary --config configs/unet.yaml [--input 4x1x512x512] [--precision bf16-mixed]
segpipe summary --config configs/unet3d.yaml --data.init_args.patch_size [96,96,96]   # overrides as for fit

The config is read by the fit parser (:mod:`segpipe.config`); the counting is :mod:`segpipe.models.summary`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segpipe.cli.usage import CommandParser
from segpipe.errors import SegpipeError

if TYPE_CHECKING:
    from segpipe.models.summary import ModelSummary

DEFAULT_SPATIAL_SIZE = {2: 256, 3: 64}


def default_input_shape(hparams: dict[str, Any], data_args: dict[str, Any]) -> tuple[int, ...]:
    """``data.batch_size`` x in_channels x the training patch; 1 x C x 256^2 (2D) or 64^3 (3D) without them."""
    from segpipe.config import training_patch_size

    spatial_dims = int(hparams["spatial_dims"])
    patch = training_patch_size(data_args, spatial_dims) or [DEFAULT_SPATIAL_SIZE[spatial_dims]] * spatial_dims
    return (int(data_args.get("batch_size") or 1), int(hparams["in_channels"]), *patch)


def summarize_config(args: list[str], input_text: str | None, precision: str) -> ModelSummary:
    """Build the model configured by ``args`` (``--config`` and overrides) on the meta device and summarise it.

    Raises:
        SegpipeError: for a config the fit parser rejects, an architecture or option that does not exist,
            a bad ``input_text`` or precision, or an input whose rank or channels do not fit the model.
    """
    from segpipe.config import data_init_args, model_hparams, read_config
    from segpipe.models.summary import parse_input_shape

    config = read_config(args)
    hparams = model_hparams(config)
    try:
        shape = parse_input_shape(input_text) if input_text else default_input_shape(hparams, data_init_args(config))
    except ValueError as err:
        raise SegpipeError(str(err)) from None
    spatial_dims, in_channels = int(hparams["spatial_dims"]), int(hparams["in_channels"])
    if len(shape) != spatial_dims + 2 or shape[1] != in_channels:
        raise SegpipeError(
            f"input {'x'.join(map(str, shape))} does not fit a {spatial_dims}D model with {in_channels} "
            f"input channels; expected B x {in_channels} x {' x '.join(['S'] * spatial_dims)}"
        )
    try:
        return _summarize_on_meta(hparams, shape, precision)
    except SegpipeError:  # an unknown model option, already one line
        raise
    # an unknown architecture or option, a bad precision, an input too small for the network's poolings
    except (ValueError, TypeError, RuntimeError) as err:
        raise SegpipeError(" ".join(str(err).split())) from None


def _summarize_on_meta(hparams: dict[str, Any], shape: tuple[int, ...], precision: str) -> ModelSummary:
    """Summarise the network built on the meta device (shapes only: no memory for weights or activations)."""
    import torch

    from segpipe.config import build_network
    from segpipe.models.summary import summarize

    try:
        with torch.device("meta"):
            network = build_network(hparams)
        return summarize(network, shape, precision)
    # an operator without a meta kernel, or a library creating tensors on the CPU: build real weights instead
    except (NotImplementedError, RuntimeError):
        return summarize(build_network(hparams), shape, precision)


def main(argv: list[str]) -> int:
    """``segpipe summary --config CONFIG [--input BxCxHxW] [--precision 32] [overrides]``; returns 0.

    Raises:
        SegpipeError: see :func:`summarize_config`; reported by :func:`segpipe.cli.main`.
    """
    parser = CommandParser(
        prog="segpipe summary",
        description="Per-layer parameters, multiply-adds and activation memory of the configured model.",
        epilog="Further arguments override the config as for segpipe fit, e.g. --model.num_classes 4",
    )
    parser.add_argument("--config", "-c", required=True, action="append", help="training YAML, as for segpipe fit")
    parser.add_argument("--input", help="input shape, e.g. 4x1x512x512 (default: data batch_size x patch)")
    parser.add_argument(
        "--precision", default="32", help="Lightning precision setting the bytes per value: 32, 16-mixed, ..."
    )
    args, overrides = parser.parse_known_args(argv)
    config_args = [arg for path in args.config for arg in ("--config", path)]
    summary = summarize_config([*config_args, *overrides], args.input, args.precision)
    from segpipe.models.summary import render

    render(summary)
    return 0
