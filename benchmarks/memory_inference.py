"""Peak memory of whole-volume prediction: the former path against the memory options of segpipe's inference.

    uv run python benchmarks/memory_inference.py [--shape 512 512 300] [--classes 4] [--tta-axes 0]
        [--network unet|pointwise] [--no-record]

Predicts one random (1, 1, *shape) volume with a small 3D U-Net (random weights: memory does not depend on
them), or with ``--network pointwise`` a single 1x1x1 convolution (for CPUs too slow to run a U-Net over a
whole large volume: the stitching, softmax and TTA buffers compared here do not depend on the network, whose
window activations add the same to every variant), through sliding windows (``--roi``, ``--overlap``),
softmax and flip TTA over ``--tta-axes``, once per variant, each in a fresh subprocess so that every peak is
its own:

* ``former``: the code before the memory options: logits stitched in float32 on the input's device, softmax
  out of place, and each TTA pass summed into a new tensor (``total = total + pass.flip(...)``);
* ``float32`` / ``float16``: :class:`segpipe.inference.WindowedInference` stitching on the input's device in
  that dtype (in-place softmax, TTA passes added into one accumulator);
* ``cpu-float32`` / ``cpu-float16`` (with a GPU): windows on the GPU, stitching on the host.

Host memory is the process's resident-set high-water mark (``VmHWM``) minus its resident set just before
the prediction (input volume and network already in memory); with a GPU, the device figure is
``torch.cuda.max_memory_allocated`` minus what was allocated before the prediction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import command_line, machine_description, publish

HEADING = "## Memory: whole-volume prediction, former path vs stitching options"
TABLE_HEADER = (
    "| date | machine | command | volume, classes, TTA passes, network | variant | windows on | stitched on, dtype "
    "| host peak above start | device peak above start | host ratio to former | device ratio to former | time |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
INTRO = (
    "Peak memory of predicting one volume (`benchmarks/memory_inference.py`), each variant in its own process, "
    "side by side in one run. `former` is the path before the stitching options (float32 on the input's "
    "device, out-of-place softmax, TTA passes summed into new tensors); the others are "
    "`segpipe.inference.WindowedInference` with `inference_device` / `inference_dtype` (docs/deployment.md)."
)
# variant -> (former code path, stitching device or None for the input's, dtype)
VARIANTS: dict[str, tuple[bool, str | None, str]] = {
    "former": (True, None, "float32"),
    "float32": (False, None, "float32"),
    "float16": (False, None, "float16"),
    "cpu-float32": (False, "cpu", "float32"),
    "cpu-float16": (False, "cpu", "float16"),
}


def resident_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def former_probabilities(
    net: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi: Sequence[int],
    overlap: float,
    axes: Sequence[int],
) -> torch.Tensor:
    """The prediction as segpipe computed it before the stitching options, for the comparison."""
    from monai.inferers import sliding_window_inference

    from segpipe.inference.tta import flip_combinations

    def predict(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(x, list(roi), 4, net, overlap=overlap, mode="gaussian").softmax(1)

    flips = flip_combinations(axes)
    total = predict(image)
    for combo in flips[1:]:
        dims = [2 + a for a in combo]
        total = total + predict(image.flip(dims)).flip(dims)
    return total / len(flips)


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Predict once with ``args.run`` in this process and return its peaks (bytes) and time."""
    from segpipe.inference.sliding_window import WindowedInference
    from segpipe.models import UNet

    former, stitch_device, dtype = VARIANTS[args.run]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if args.network == "unet":
        net: torch.nn.Module = UNet(3, 1, args.classes, depth=3, base_channels=8)
    else:
        net = torch.nn.Conv3d(1, args.classes, 1)
    net = net.eval().to(device)
    image = torch.randn(1, 1, *args.shape, generator=torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    host_start, device_start = (
        resident_kib("VmRSS") * 1024,
        torch.cuda.memory_allocated() if device.type == "cuda" else 0,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        if former:
            result = former_probabilities(net, image, args.roi, args.overlap, args.tta_axes)
        else:
            inference = WindowedInference(3, args.roi, args.overlap, 4, device=stitch_device, dtype=dtype)
            result = inference.probabilities(net, image, args.tta_axes)
        labels = result.argmax(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "host_peak": resident_kib("VmHWM") * 1024 - host_start,
        "device_peak": torch.cuda.max_memory_allocated() - device_start if device.type == "cuda" else None,
        "seconds": seconds,
        "windows_on": str(device),
        "stitched_on": f"{result.device}, {str(result.dtype).removeprefix('torch.')}",
        "labels": int(labels.max()),
    }


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--roi", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--network", choices=["unet", "pointwise"], default="unet")
    parser.add_argument("--tta-axes", type=int, nargs="*", default=[0], help="flip axes (2**n passes); none: one pass")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="default: former, float32, float16 (+ cpu-float32, cpu-float16 with a GPU)",
    )
    parser.add_argument("--no-record", action="store_true", help="print the rows, do not append to docs/benchmarks.md")
    parser.add_argument("--run", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the per-variant subprocess
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_variant(args)))
        return
    cuda = torch.cuda.is_available()
    variants = args.variants or ["former", "float32", "float16", *(["cpu-float32", "cpu-float16"] if cuda else [])]
    forwarded = [a for a in sys.argv[1:] if a != "--no-record"]
    results = {}
    for variant in variants:
        out = subprocess.run([sys.executable, __file__, *forwarded, "--run", variant], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{variant}: {json.dumps(results[variant])}", flush=True)
    reference = results.get("former", {})
    passes = 2 ** len(args.tta_axes)
    case = f"{'x'.join(map(str, args.shape))}, {args.classes}, {passes}, {args.network}"
    machine = machine_description(torch.device("cuda") if cuda else None)
    rows = [
        f"| {dt.date.today()} | {machine} | `{command_line()}` | {case} | {name} | {r['windows_on']} "
        f"| {r['stitched_on']} "
        f"| {gib(r['host_peak'])} | {gib(r['device_peak'])} | {ratio(r['host_peak'], reference.get('host_peak'))} "
        f"| {ratio(r['device_peak'], reference.get('device_peak'))} | {r['seconds']:.0f} s |"
        for name, r in results.items()
    ]
    publish(HEADING, TABLE_HEADER, rows, INTRO, record=not args.no_record)


if __name__ == "__main__":
    main()
