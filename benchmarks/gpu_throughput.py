"""Training images/s of a 2D U-Net at 256x256 in fp32, bf16-mixed, channels_last and torch.compile, and the
fraction of the GPU's peak arithmetic it reaches.

    uv run python benchmarks/gpu_throughput.py [--batch 32] [--steps 30] [--warmup 10]
    uv run python benchmarks/gpu_throughput.py --device cpu --batch 2 --size 64 --steps 3 --warmup 1 --no-record

Each variant trains the same network (``--model-kwargs``, default the demo's U-Net at 32 base channels)
with AdamW on random batches already on the device, so the figure is the model's, not the loader's.
Steps are timed with CUDA events after ``--warmup`` steps (compilation happens there).

FLOPs per image come from ``segpipe summary`` (multiply-adds of the forward pass); a training step
costs about 3x the forward (forward, gradient w.r.t. activations, gradient w.r.t. weights), and one
multiply-add is 2 FLOPs, so achieved FLOP/s = images/s x MACs x 2 x 3. The peak is the dense (no
sparsity) tensor-core figure of the GPU's datasheet for the variant's precision (``--peak-tflops``
overrides it, for GPUs not in :data:`PEAK_TFLOPS`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import command_line, machine_description, publish

from segpipe.losses import SegmentationLoss
from segpipe.models import build_model
from segpipe.models.summary import summarize

HEADING = "## GPU: 2D U-Net training throughput and fraction of peak"
TABLE_HEADER = (
    "| date | machine | command | variant | batch x input | images/s | ms/step | GFLOP/image (train) "
    "| TFLOP/s | peak TFLOP/s | fraction of peak |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
)
INTRO = (
    "`benchmarks/gpu_throughput.py`: training images/s of a 2D U-Net on random device-resident batches; "
    "training FLOPs = 3 x 2 x forward MACs from `segpipe summary`; peak = dense tensor-core datasheet figure."
)
# Dense (no structured sparsity) datasheet peaks in TFLOP/s: (tf32/fp32 tensor cores, bf16).
PEAK_TFLOPS = {
    "H200": (494.7, 989.4),
    "H100 SXM": (494.7, 989.4),
    "H100 PCIe": (378.0, 756.0),
    "H100 NVL": (417.5, 835.0),
    "A100": (156.0, 312.0),
    "L40S": (183.0, 362.05),
}
VARIANTS = {
    "fp32": {"precision": "32", "channels_last": False, "compile": False},
    "bf16-mixed": {"precision": "bf16", "channels_last": False, "compile": False},
    "bf16-mixed + channels_last": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16-mixed + channels_last + compile": {"precision": "bf16", "channels_last": True, "compile": True},
}


def peak_for(device: torch.device, precision: str, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (fp32, bf16) in PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return bf16 if precision == "bf16" else fp32
    return None


def run_variant(args: argparse.Namespace, device: torch.device, variant: dict[str, object]) -> float:
    """Median seconds per training step."""
    torch.manual_seed(0)
    net = build_model("unet", 2, 1, args.num_classes, **args.model_kwargs).to(device).train()
    memory_format = torch.channels_last if variant["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    criterion = SegmentationLoss("dice_ce", args.num_classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=device.type == "cuda")
    image = torch.randn(args.batch, 1, args.size, args.size, device=device).to(memory_format=memory_format)
    mask = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), device=device)
    forward = torch.compile(net) if variant["compile"] else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant["precision"] == "bf16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = criterion(forward(image), mask)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={"depth": 4, "base_channels": 32, "norm": "batch", "upsample": "transpose"},
        help="U-Net options as JSON",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak of this GPU for the variant's precision")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net = build_model("unet", 2, 1, args.num_classes, **args.model_kwargs)
    macs = summarize(net, (1, 1, args.size, args.size), "32").macs_per_sample
    train_flops = 3 * 2 * macs
    rows = []
    for name in args.variants:
        variant = VARIANTS[name]
        seconds = run_variant(args, device, variant)
        images = args.batch / seconds
        achieved = images * train_flops / 1e12
        peak = peak_for(device, str(variant["precision"]), args.peak_tflops)
        fraction = f"{achieved / peak:.1%}" if peak else "n/a"
        rows.append(
            f"| {dt.date.today()} | {machine_description(device)} | `{command_line()}` | {name} | "
            f"{args.batch}x1x{args.size}x{args.size} | {images:.1f} | {seconds * 1000:.1f} | {train_flops / 1e9:.2f} | "
            f"{achieved:.2f} | {peak if peak else 'n/a'} | {fraction} |"
        )
        print(f"{name}: {images:.1f} images/s, {achieved:.2f} TFLOP/s, fraction of peak {fraction}", flush=True)
    publish(HEADING, TABLE_HEADER, rows, INTRO, record=not args.no_record)


if __name__ == "__main__":
    main()
