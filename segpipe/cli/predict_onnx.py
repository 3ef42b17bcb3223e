"""``segpipe predict --onnx``: masks from an exported ONNX file with ONNX Runtime, without Lightning.

segpipe predict --onnx model.onnx --input data/demo/test/images --output predictions
segpipe predict --onnx unet3d.onnx --input scans/ --output masks/ --tta          # flip TTA over every axis
segpipe predict --onnx unet3d.onnx --input scans/case_01.nii.gz --tta 0 1        # ... or over axes 0 and 1

2D images (PNG, TIFF, JPEG) give ``<stem>.png`` label masks; volumes (NIfTI, NRRD, MHA/MHD, NumPy, DICOM
series folders; nnU-Net ``_0000`` channel files grouped) give ``<case>.nii.gz`` on the input's grid with its
header, as ``segpipe predict --config ... --ckpt_path ...`` writes them (see docs/deployment.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segpipe.cli.usage import CommandParser
from segpipe.errors import DataError, SegpipeError


def build_parser() -> argparse.ArgumentParser:
    """The options of ``segpipe predict --onnx``; usage errors raise :class:`segpipe.cli.usage.UsageError`."""
    parser = CommandParser(
        prog="segpipe predict --onnx",
        description="Predict label masks with a network exported by `segpipe export --format onnx`, using "
        "the preprocessing and sliding window stored in its metadata (ONNX Runtime, CPU).",
    )
    parser.add_argument("--onnx", required=True, help="ONNX file written by segpipe export")
    parser.add_argument("--input", required=True, help="an image or volume file, or a folder of them")
    parser.add_argument("--output", default="predictions", help="folder for the masks (default: predictions)")
    parser.add_argument(
        "--tta",
        nargs="*",
        type=int,
        metavar="AXIS",
        help="flip test-time augmentation: alone, over every spatial axis; with axes (0-based), over those",
    )
    return parser


def image_inputs(path: Path) -> dict[str, Path]:
    """Name -> file of the 2D images at ``path`` (a file, or a folder's image files); empty if none."""
    from segpipe.data.sources.pairing import list_files
    from segpipe.io.images import IMAGE_SUFFIXES

    if path.is_file():
        return {path.stem: path} if path.suffix.lower() in IMAGE_SUFFIXES else {}
    return list_files(path, IMAGE_SUFFIXES) if path.is_dir() else {}


def volume_inputs(path: Path, in_channels: int) -> dict[str, tuple[Path, ...]]:
    """Case name -> channel files of the volumes at ``path``: a file or DICOM folder is one case; in a
    folder, nnU-Net ``<case>_0000`` names are grouped by case (required for more than one channel).

    Raises:
        DataError: for a missing path, a folder without volumes, or channel files that do not group.
    """
    from segpipe.data.sources.layouts import group_channels, list_volumes
    from segpipe.io.volumes import VOLUME_SUFFIXES, is_dicom_series, volume_name, volume_suffix

    if not path.exists():
        raise DataError(path, "input does not exist")
    if volume_suffix(path) is not None or is_dicom_series(path):
        return {volume_name(path): (path,)}
    files = list_volumes(path)
    if not files:
        raise DataError(path, f"holds no images or volumes ({', '.join(VOLUME_SUFFIXES)}, DICOM folders)")
    grouped, problems = group_channels(files)
    if problems and in_channels > 1:
        raise problems[0]
    return grouped if not problems else {name: (file,) for name, file in files.items()}


def main(argv: list[str]) -> int:
    """``segpipe predict --onnx FILE --input PATH [--output DIR] [--tta [AXIS ...]]``.

    Raises:
        SegpipeError: a missing or invalid ONNX file or one without segpipe metadata, missing or unreadable
            inputs, bad TTA axes; reported by :func:`segpipe.cli.main`.
    """
    args = build_parser().parse_args(argv)
    from segpipe.inference.onnx_runtime import image_probabilities, load_segmenter, volume_probabilities
    from segpipe.inference.tta import tta_axes
    from segpipe.inference.volume_writer import write_volume_prediction
    from segpipe.io.images import read_image, write_mask

    segmenter = load_segmenter(args.onnx)
    source, output = Path(args.input), Path(args.output)
    try:
        axes = tta_axes(True if args.tta == [] else (args.tta or False), segmenter.spatial_dims)
    except ValueError as err:
        raise SegpipeError(f"--tta: {err}") from None
    images = image_inputs(source) if segmenter.spatial_dims == 2 else {}
    if images:
        for name, file in images.items():
            probabilities = image_probabilities(segmenter, read_image(file), axes)
            write_mask(output / f"{name}.png", probabilities.argmax(0).numpy())
        print(f"segpipe: wrote {len(images)} masks to {output}")
        return 0
    cases = volume_inputs(source, int(segmenter.metadata.get("in_channels", 1)))
    segmenter.preprocessing_plan()  # refuse a file without its plan before anything is written
    for name, files in cases.items():
        probabilities, geometry = volume_probabilities(segmenter, files, name, axes)
        write_volume_prediction(output, name, probabilities, geometry)
    print(f"segpipe: wrote {len(cases)} masks to {output}")
    return 0
