"""``segpipe export``: a trained checkpoint to ONNX or TorchScript with its preprocessing metadata."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from segpipe.cli.usage import CommandParser

if TYPE_CHECKING:  # the exporters load ONNX and the networks: imported when an export runs
    from segpipe.export.exporter import ExportResult

USAGE_EXAMPLE = """\
examples:
  segpipe export --ckpt outputs/1/<run>/checkpoints/best.ckpt --format onnx --config configs/demo.yaml
  segpipe export --ckpt best.ckpt --format torchscript --output model.torchscript.pt --input-size 512x512
  segpipe export --ckpt best.ckpt --config configs/demo.yaml --data.init_args.normalization none

With --config, further arguments override it as for segpipe fit; the checkpoint's own DataModule
hyperparameters, when it holds them, come first.

The metadata (channels, classes, normalisation, patch size, dynamic axes) goes inside the file
(ONNX metadata_props / TorchScript _extra_files["segpipe.json"]) and beside it in <output>.json.
"""


def build_parser() -> argparse.ArgumentParser:
    """The options of ``segpipe export``; its usage errors raise :class:`segpipe.cli.usage.UsageError`."""
    parser = CommandParser(
        prog="segpipe export",
        description="Export the network of a segpipe checkpoint for deployment outside Python, with its "
        "preprocessing metadata, and check the exported file against PyTorch.",
        epilog=USAGE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by segpipe fit (.ckpt)")
    parser.add_argument(
        "--format",
        default="onnx",
        type=str.lower,
        help="onnx (ONNX Runtime, TensorRT, ...) or torchscript (libtorch); default onnx",
    )
    parser.add_argument("--output", "-o", help="file to write (default: beside the checkpoint)")
    parser.add_argument("--config", "-c", help="training YAML: normalisation and patch size of its data section")
    parser.add_argument(
        "--input-size",
        help="spatial size to trace with, e.g. 256x256 or 64 (default: the patch size, else 256 / 64^3)",
    )
    parser.add_argument(
        "--fixed-size", action="store_true", help="export for --input-size only (the batch stays dynamic)"
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the exported file with PyTorch at two input sizes (default: on)",
    )
    return parser


def describe(result: ExportResult) -> list[str]:
    """The lines printed after an export."""
    meta = result.metadata
    inp = meta["input"]
    shape = "[" + ", ".join(str(s) for s in inp["shape"]) + "]"
    norm = meta["normalization"]
    lines = [
        f"wrote {result.path} ({meta['format']}, {meta['model']}, {meta['in_channels']} channel(s) -> "
        f"{meta['num_classes']} classes: {', '.join(meta['class_names'])})",
        f"  input {inp['name']} float32 {shape}; spatial size "
        + ("any" if meta["dynamic_spatial"] else "fixed")
        + f": {meta['spatial_size_note']}",
        f"  normalization {norm['mode']} ({norm['source']}): {norm['formula']}",
        f"  patch size: {meta['patch_size'] or 'unknown'}; metadata inside the file and in {result.metadata_path}",
    ]
    if meta["sliding_window"]:
        window = meta["sliding_window"]
        lines.append(
            f"  trained with sliding-window inference: roi {window['roi']}, overlap {window['overlap']} "
            f"({window['blending']} blending): repeat it for inputs larger than the roi"
        )
    if result.checks:
        shapes = " and ".join("x".join(map(str, s)) for s, _ in result.checks)
        lines.append(f"  checked against PyTorch at {shapes}: max |diff| {result.max_abs_diff:.2e}")
    return lines


def main(argv: list[str]) -> int:
    """``segpipe export --ckpt FILE [--format onnx|torchscript] ... [config overrides]``; returns 0.

    Raises:
        SegpipeError: for a bad option, checkpoint, config or size, or a network that does not export;
            reported by :func:`segpipe.cli.main`.
    """
    args, overrides = build_parser().parse_known_args(argv)
    from segpipe.export.exporter import export_checkpoint

    result = export_checkpoint(
        args.ckpt,
        args.format,
        output=args.output,
        config=args.config,
        config_overrides=overrides,
        input_size=args.input_size,
        fixed_size=args.fixed_size,
        verify=args.verify,
        opset=args.opset,
    )
    print("\n".join(describe(result)))
    return 0
