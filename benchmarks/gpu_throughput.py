"""segpipe on one GPU: 2D U-Net training images/s and fraction of peak, the demo, 3D training, sliding windows, loader.

    uv run python benchmarks/gpu_throughput.py [--batch 32] [--steps 30] [--warmup 10]
    uv run python benchmarks/gpu_throughput.py --sections all --json results.json --budget-s 290 --no-record
    uv run python benchmarks/gpu_throughput.py --device cpu --batch 2 --size 64 --steps 3 --warmup 1 --no-record

``--sections`` picks what runs, in this order (``all``: every one; default ``train2d``, the original table):

- ``matmul``: the ceiling, an 8192^3 bf16 matrix product on random data (TFLOP/s, mean of 10 after 3 warm-ups).
- ``train2d``: training steps (forward, dice+CE loss, backward, fused AdamW) of the U-Net on random batches
  already on the device, for each ``--widths`` (base channels; 16 is the demo's network) in fp32 (TF32
  convolutions, PyTorch's default), bf16-mixed (autocast) and bf16-mixed + channels_last.
- ``profile``: torch.profiler's top kernels (self device time) of the bf16 + channels_last step per width
  (``--profile-compiled``: of each compiled variant too, after its timing).
- ``demo``: ``segpipe fit --config configs/demo.yaml`` on the GPU as a subprocess (wall time, test Dice),
  once per ``--demo-precision``.
- ``unet3d``: training steps of a 3D U-Net (``--unet3d-kwargs``) at ``--patch3d`` x ``--batch3d``: voxels/s.
- ``sliding``: MONAI ``sliding_window_inference`` as segpipe calls it (gaussian blending, overlap 0.5,
  4 windows per batch) of that 3D U-Net over one ``--volume`` on the device: s/volume, peak device memory.
- ``loader``: images/s the demo's training DataLoader delivers at ``--loader-workers`` vs images/s the
  demo's own training step (batch 4, fp32) consumes on the device.
- ``compile2d``: the ``--compile-plan`` pairs (width, variant with ``torch.compile``): graph breaks and
  first-step compile seconds reported.

Steps are timed with CUDA events around blocks of ``--steps`` steps after ``--warmup`` steps (compilation
and cuDNN autotuning happen there), so the host runs ahead as in training; the median block gives ms/step.

FLOPs per image come from ``segpipe summary`` (multiply-adds of the forward pass); a training step
costs about 3x the forward (forward, gradient w.r.t. activations, gradient w.r.t. weights), and one
multiply-add is 2 FLOPs, so achieved FLOP/s = images/s x MACs x 2 x 3. The peak is the dense (no
sparsity) tensor-core figure of the GPU's datasheet for the variant's precision (``--peak-tflops``
overrides it, for GPUs not in :data:`PEAK_TFLOPS`); with ``matmul`` the fraction of the measured
matrix-product rate is given too. ``--budget-s`` skips sections that would start too late.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, command_line, machine_description, publish, resolved_config

from segpipe.losses import SegmentationLoss
from segpipe.models import build_model
from segpipe.models.summary import summarize

HEADING = "## GPU: 2D U-Net training throughput and fraction of peak"
TABLE_HEADER = (
    "| date | GPU, driver, versions | command | width | variant | batch x input | images/s | ms/step "
    "| GFLOP/image (train) | TFLOP/s | peak TFLOP/s | of peak | of measured bf16 matmul | peak memory "
    "| compile s / graph breaks |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
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
    "fp32 + compile": {"precision": "32", "channels_last": False, "compile": True},
    "bf16-mixed + compile": {"precision": "bf16", "channels_last": False, "compile": True},
    "bf16-mixed + channels_last + compile": {"precision": "bf16", "channels_last": True, "compile": True},
}
EAGER = [name for name, v in VARIANTS.items() if not v["compile"]]
SECTIONS = ("matmul", "train2d", "profile", "demo", "unet3d", "sliding", "loader", "compile2d")
DEMO_KWARGS = {"depth": 4, "base_channels": 16, "norm": "batch", "upsample": "transpose", "padded": True}


class Deadline:
    """Seconds left of ``--budget-s`` since the script started."""

    def __init__(self, budget_s: float | None) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        if self.budget_s is None:
            return float("inf")
        return self.budget_s - (time.perf_counter() - self.start)


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int, blocks: int, max_s: float
) -> tuple[float, float]:
    """(median seconds per step over ``blocks`` blocks of ``steps`` steps, seconds of the first warm-up step).

    Blocks stop early once ``max_s`` seconds of timed work have passed (at least one block runs).
    """
    begin = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - begin
    for _ in range(max(warmup - 1, 0)):
        step()
    synchronize(device)
    per_step, spent = [], 0.0
    for _ in range(blocks):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                step()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            seconds = time.perf_counter() - t0
        per_step.append(seconds / steps)
        spent += seconds
        if spent > max_s:
            break
    return statistics.median(per_step), first


def make_train_step(
    net: torch.nn.Module,
    device: torch.device,
    variant: dict[str, object],
    image: torch.Tensor,
    mask: torch.Tensor,
    num_classes: int,
) -> Callable[[], None]:
    """One training step of ``net`` on the fixed batch, as segpipe's task runs it (no host reads)."""
    criterion = SegmentationLoss("dice_ce", num_classes)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=device.type == "cuda")
    forward = torch.compile(net) if variant["compile"] else net
    enabled = variant["precision"] == "bf16"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            loss = criterion(forward(image), mask)
        loss.backward()
        optimizer.step()

    return step


def graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def run_variant(
    args: argparse.Namespace,
    device: torch.device,
    variant: dict[str, object],
    model_kwargs: dict[str, Any] | None = None,
    batch: int | None = None,
) -> float:
    """Median seconds per training step (see :func:`measure_variant` for the details)."""
    return measure_variant(args, device, variant, model_kwargs, batch)["seconds"]


def measure_variant(
    args: argparse.Namespace,
    device: torch.device,
    variant: dict[str, object],
    model_kwargs: dict[str, Any] | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    torch.manual_seed(0)
    batch = batch or args.batch
    model_kwargs = model_kwargs if model_kwargs is not None else args.model_kwargs
    net = build_model("unet", 2, 1, args.num_classes, **model_kwargs).to(device).train()
    memory_format = torch.channels_last if variant["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    image = torch.randn(batch, 1, args.size, args.size, device=device).to(memory_format=memory_format)
    mask = torch.randint(0, args.num_classes, (batch, args.size, args.size), device=device)
    if variant["compile"]:
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = make_train_step(net, device, variant, image, mask, args.num_classes)
    seconds, first = time_steps(step, device, args.warmup, args.steps, args.blocks, args.max_variant_s)
    result = {"seconds": seconds, "first_step_s": first, "batch": batch}
    if variant["compile"]:
        result["graph_breaks"] = graph_breaks()
        if getattr(args, "profile_compiled", False):
            width = model_kwargs.get("base_channels")
            title = f"width {width}, batch {batch}, compiled, {variant['precision']}"
            text, kinds = profile_step(
                step, device, 3, title + (" + channels_last" if variant["channels_last"] else "")
            )
            with (args.out / "profile.txt").open("a") as handle:
                handle.write(text)
            result["profile"] = kinds
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del step, net, image, mask
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def width_kwargs(args: argparse.Namespace, width: int) -> dict[str, Any]:
    return {**args.model_kwargs, "base_channels": width}


def train_flops_2d(args: argparse.Namespace, model_kwargs: dict[str, Any]) -> float:
    with torch.device("meta"):
        net = build_model("unet", 2, 1, args.num_classes, **model_kwargs)
    return 3 * 2 * summarize(net, (1, 1, args.size, args.size), "32").macs_per_sample


def section_matmul(args: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> None:
    n = args.matmul_size
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            a @ b
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        for _ in range(10):
            a @ b
        seconds = time.perf_counter() - t0
    results["matmul"] = {"size": n, "tflops": 2 * n**3 * 10 / seconds / 1e12}
    print(f"matmul {n}^3 bf16: {results['matmul']['tflops']:.1f} TFLOP/s", flush=True)


def train_rows(
    args: argparse.Namespace,
    device: torch.device,
    results: dict[str, Any],
    names: list[str],
    widths: list[int],
    deadline: Deadline,
    key: str,
) -> None:
    rows = results.setdefault(key, [])
    for width in widths:
        kwargs = width_kwargs(args, width)
        flops = train_flops_2d(args, kwargs)
        batch = args.batch_per_width.get(str(width), args.batch)
        for name in names:
            variant = VARIANTS[name]
            if deadline.left() < (args.compile_reserve_s if variant["compile"] else 10):
                print(f"skipped {name} width {width}: budget", flush=True)
                continue
            try:
                r = measure_variant(args, device, variant, kwargs, batch)
            except Exception as err:  # a failed variant (out of memory, compile error) is a result too
                rows.append({"variant": name, "width": width, "batch": batch, "error": repr(err)[:500]})
                print(f"{name} width {width}: FAILED {err!r}"[:300], flush=True)
                continue
            images = batch / r["seconds"]
            achieved = images * flops / 1e12
            peak = peak_for(device, str(variant["precision"]), args.peak_tflops)
            row = {
                "variant": name,
                "width": width,
                **r,
                "images_per_s": images,
                "ms_per_step": r["seconds"] * 1000,
                "gflop_per_image": flops / 1e9,
                "tflops": achieved,
                "peak_tflops": peak,
                "fraction_of_peak": achieved / peak if peak else None,
            }
            if "matmul" in results and variant["precision"] == "bf16":
                row["fraction_of_matmul"] = achieved / results["matmul"]["tflops"]
            rows.append(row)
            frac = f"{achieved / peak:.1%}" if peak else "n/a"
            print(
                f"{name} width {width} batch {batch}: {images:.0f} img/s, {r['seconds'] * 1000:.1f} ms/step, "
                f"{achieved:.1f} TFLOP/s, {frac} of peak"
                + (
                    f", compile {r['first_step_s']:.0f} s, graph breaks {r['graph_breaks']}"
                    if variant["compile"]
                    else ""
                ),
                flush=True,
            )


def run_demo(args: argparse.Namespace, precision: str, out: Path) -> dict[str, Any]:
    log = out / f"demo_{precision}.log"
    command = [
        sys.executable,
        "-m",
        "segpipe.cli",
        "fit",
        "--config",
        str(args.demo_config),
        "--trainer.accelerator",
        "gpu" if torch.cuda.is_available() else "cpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        precision,
        "--data.init_args.root",
        str(args.demo_root),
        "--trainer.logger.init_args.tracking_uri",
        f"sqlite:///{args.demo_tmp}/mlflow-{precision}.db",
        "--trainer.default_root_dir",
        f"{args.demo_tmp}/outputs-{precision}",
        *shlex.split(args.demo_extra),
    ]
    start = time.perf_counter()
    with log.open("w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=args.demo_timeout_s)
    wall = time.perf_counter() - start
    text = log.read_text()
    metrics = {m.group(1): float(m.group(2)) for m in re.finditer(r"(test/\w+)\s*│\s*([0-9.eE+-]+)", text)}
    epochs = re.findall(r"Epoch (\d+)/", text)
    return {
        "precision": precision,
        "returncode": proc.returncode,
        "wall_s": wall,
        "test_dice": metrics.get("test/dice_pooled"),
        "test_metrics": metrics,
        "last_epoch_seen": max(map(int, epochs)) if epochs else None,
        "command": " ".join(command[1:]),
    }


def section_demo(args: argparse.Namespace, device: torch.device, results: dict[str, Any], out: Path) -> None:
    rows = results.setdefault("demo", [])
    for precision in args.demo_precision:
        try:
            row = run_demo(args, precision, out)
        except subprocess.TimeoutExpired:
            row = {"precision": precision, "error": f"timeout {args.demo_timeout_s} s"}
        rows.append(row)
        print(f"demo {precision}: {row}", flush=True)


def section_unet3d(args: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> None:
    rows = results.setdefault("unet3d", [])
    patch = tuple(args.patch3d)
    with torch.device("meta"):
        meta = build_model("unet", 3, 1, args.classes3d, **args.unet3d_kwargs)
    macs = summarize(meta, (1, 1, *patch), "32").macs_per_sample
    for precision in args.precision3d:
        torch.manual_seed(0)
        net = build_model("unet", 3, 1, args.classes3d, **args.unet3d_kwargs).to(device).train()
        image = torch.randn(args.batch3d, 1, *patch, device=device)
        mask = torch.randint(0, args.classes3d, (args.batch3d, *patch), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        variant = {"precision": precision, "compile": False}
        step = make_train_step(net, device, variant, image, mask, args.classes3d)
        seconds, _ = time_steps(step, device, 3, args.steps3d, 3, args.max_variant_s)
        voxels = args.batch3d * int(torch.tensor(patch).prod()) / seconds
        tflops = args.batch3d * macs * 6 / seconds / 1e12
        peak = peak_for(device, precision, None)
        row = {
            "precision": precision,
            "patch": patch,
            "batch": args.batch3d,
            "ms_per_step": seconds * 1000,
            "voxels_per_s": voxels,
            "gflop_per_patch": 6 * macs / 1e9,
            "tflops": tflops,
            "fraction_of_peak": tflops / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        rows.append(row)
        print(f"unet3d {precision}: {row}", flush=True)
        del step, net, image, mask
        if device.type == "cuda":
            torch.cuda.empty_cache()


def section_sliding(args: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> None:
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = build_model("unet", 3, 1, args.classes3d, **args.unet3d_kwargs).to(device).eval()
    rows = results.setdefault("sliding", [])
    for precision in args.precision3d:
        enabled = precision == "bf16"

        def infer(volume: torch.Tensor, enabled: bool = enabled) -> torch.Tensor:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                return sliding_window_inference(
                    volume,
                    roi_size=tuple(args.patch3d),
                    sw_batch_size=args.sw_batch,
                    predictor=net,
                    overlap=0.5,
                    mode="gaussian",
                )

        warm = torch.randn(1, 1, *(2 * p for p in args.patch3d), device=device)
        infer(warm)
        del warm
        volume = torch.randn(1, 1, *args.volume, device=device)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.sliding_repeats):
            t0 = time.perf_counter()
            logits = infer(volume)
            synchronize(device)
            times.append(time.perf_counter() - t0)
        row = {
            "precision": precision,
            "volume": list(args.volume),
            "roi": list(args.patch3d),
            "sw_batch_size": args.sw_batch,
            "output_dtype": str(logits.dtype),
            "seconds_per_volume": min(times),
            "all_seconds": times,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        rows.append(row)
        print(f"sliding {precision}: {row}", flush=True)
        del logits, volume
        if device.type == "cuda":
            torch.cuda.empty_cache()


def section_loader(args: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> None:
    from loader import build_datamodule, loader_rate

    config = resolved_config(Path(args.demo_config))
    config["data"].setdefault("init_args", {})["root"] = str(args.demo_root)
    configured = int(config["data"]["init_args"].get("num_workers", 0))
    batch = next(iter(build_datamodule(config, 0).train_dataloader()))
    image = batch["image"].to(device)
    mask = batch["mask"].to(device)
    kwargs = config["model"]["model_kwargs"]
    consumed = {}
    for name in ("fp32", "bf16-mixed"):
        torch.manual_seed(0)
        net = build_model("unet", 2, 1, config["model"]["num_classes"], **kwargs).to(device).train()
        step = make_train_step(net, device, VARIANTS[name], image, mask, config["model"]["num_classes"])
        seconds, _ = time_steps(step, device, 5, 20, 3, 10.0)
        consumed[name] = len(image) / seconds
    rows = []
    for workers in sorted({*args.loader_workers, configured}):
        rate, batch_size = loader_rate(config, workers, args.loader_epochs)
        rows.append({"workers": workers, "configured": workers == configured, "images_per_s": rate})
        print(f"loader workers {workers}: {rate:.0f} img/s (batch {batch_size})", flush=True)
    results["loader"] = {
        "batch": list(image.shape),
        "model_images_per_s": consumed,
        "rows": rows,
    }
    print(f"demo step consumes {consumed} img/s", flush=True)


def kernel_kind(name: str) -> str:
    low = name.lower()
    if low.startswith("triton"):
        return "triton (fused)"
    if any(k in low for k in ("xmma", "gemm", "conv", "cutlass", "cudnn", "wgrad", "dgrad", "fprop")):
        return "conv/gemm"
    if "batch_norm" in low:
        return "batchnorm"
    return "elementwise/other"


def profile_step(
    step: Callable[[], None], device: torch.device, steps: int, title: str
) -> tuple[str, dict[str, Any] | None]:
    """torch.profiler over ``steps`` steps: the top-25 table and the device time per step by kernel kind."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    sort = attr if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=25, max_name_column_width=90)
    text = f"### {title}, {steps} steps\n{table}\n"
    if device.type != "cuda":
        return text, None
    # kernels only (the aten:: rows repeat their kernels' device time)
    kernels = [(e.key, getattr(e, attr)) for e in events if "CUDA" in str(getattr(e, "device_type", ""))]
    kernels = [(k, t) for k, t in kernels if t > 0]
    if not kernels:  # no device_type on the averages: keep the rows that are not operators
        kernels = [(e.key, getattr(e, attr)) for e in events if getattr(e, attr) > 0 and "::" not in e.key]
    total = sum(t for _, t in kernels) or 1.0
    groups: dict[str, float] = {}
    for name, t in kernels:
        groups[kernel_kind(name)] = groups.get(kernel_kind(name), 0.0) + t
    top = sorted(kernels, key=lambda kt: -kt[1])[:8]
    return text, {
        "title": title,
        "device_ms_per_step": total / steps / 1000,
        "share": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": k[:160], "ms_per_step": t / steps / 1000} for k, t in top],
    }


def section_profile(args: argparse.Namespace, device: torch.device, results: dict[str, Any], out: Path) -> None:
    texts = []
    summary = results.setdefault("profile", [])
    for width in args.profile_widths or args.widths:
        batch = args.batch_per_width.get(str(width), args.batch)
        variant = VARIANTS["bf16-mixed + channels_last"]
        torch.manual_seed(0)
        net = build_model("unet", 2, 1, args.num_classes, **width_kwargs(args, width)).to(device).train()
        net = net.to(memory_format=torch.channels_last)
        image = torch.randn(batch, 1, args.size, args.size, device=device).to(memory_format=torch.channels_last)
        mask = torch.randint(0, args.num_classes, (batch, args.size, args.size), device=device)
        step = make_train_step(net, device, variant, image, mask, args.num_classes)
        for _ in range(5):
            step()
        title = f"width {width}, batch {batch}, bf16-mixed + channels_last"
        text, kinds = profile_step(step, device, 3, title)
        texts.append(text)
        if kinds:
            summary.append({"width": width, "batch": batch, **kinds})
        del step, net, image, mask
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with (out / "profile.txt").open("a") as handle:
        handle.write("\n".join(texts))


def environment(device: torch.device) -> dict[str, Any]:
    import lightning

    env = {
        "date": str(dt.date.today()),
        "machine": machine_description(device),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30}
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            env["driver"] = repr(err)
    try:
        import monai

        env["monai"] = monai.__version__
    except ImportError:
        pass
    return env


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if "matmul" in results:
        lines.append(f"matmul bf16 {results['matmul']['size']}^3: {results['matmul']['tflops']:.0f} TFLOP/s")
    for key in ("train2d", "compile2d"):
        for r in results.get(key, []):
            if "error" in r:
                lines.append(f"{key} w{r['width']} {r['variant']}: ERROR {r['error'][:120]}")
                continue
            extra = f" compile {r['first_step_s']:.0f}s gb {r['graph_breaks']}" if "graph_breaks" in r else ""
            frac = f"{r['fraction_of_peak']:.1%}" if r["fraction_of_peak"] is not None else "n/a"
            mm = f" ({r['fraction_of_matmul']:.1%} mm)" if "fraction_of_matmul" in r else ""
            lines.append(
                f"w{r['width']} b{r['batch']} {r['variant']}: {r['images_per_s']:.0f} img/s "
                f"{r['ms_per_step']:.1f} ms {r['tflops']:.0f} TF {frac}{mm} {r.get('peak_memory_gib', 0):.1f}GiB{extra}"
            )
    for r in results.get("demo", []):
        if "error" in r:
            lines.append(f"demo {r['precision']}: ERROR {r['error']}")
        else:
            lines.append(
                f"demo {r['precision']}: rc {r['returncode']} wall {r['wall_s']:.1f} s test Dice {r['test_dice']} "
                f"epochs {r['last_epoch_seen']}"
            )
    for r in results.get("unet3d", []):
        lines.append(
            f"unet3d {r['precision']} {r['batch']}x{r['patch']}: {r['voxels_per_s'] / 1e6:.1f} Mvox/s "
            f"{r['ms_per_step']:.1f} ms {r['tflops']:.0f} TF {r['peak_memory_gib'] or 0:.1f}GiB"
        )
    for r in results.get("sliding", []):
        lines.append(
            f"sliding {r['precision']} {r['volume']}: {r['seconds_per_volume']:.2f} s/vol "
            f"peak {r['peak_memory_gib'] or 0:.2f} GiB out {r['output_dtype']}"
        )
    if "loader" in results:
        lo = results["loader"]
        model = ", ".join(f"{k} {v:.0f}" for k, v in lo["model_images_per_s"].items())
        loaders = ", ".join(f"{r['workers']}w {r['images_per_s']:.0f}" for r in lo["rows"])
        lines.append(f"loader img/s: {loaders}; demo step consumes {model}")
    profiles = [r for r in results.get("profile", [])]
    profiles += [r["profile"] for r in results.get("compile2d", []) if r.get("profile")]
    for r in profiles:
        share = ", ".join(f"{k} {v:.0%}" for k, v in r["share"].items())
        lines.append(f"profile {r['title']}: {r['device_ms_per_step']:.1f} device ms/step: {share}")
    for key, value in results.get("errors", {}).items():
        lines.append(f"section {key}: ERROR {value[:200]}")
    return lines


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
    parser.add_argument("--steps", type=int, default=30, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=1, help="timed blocks per variant (median)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-variant-s", type=float, default=30.0, help="stop timing a variant after this")
    parser.add_argument("--variants", nargs="+", default=[*EAGER, "bf16-mixed + channels_last + compile"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak of this GPU for the variant's precision")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    # the suite
    parser.add_argument("--sections", nargs="+", default=None, help=f"any of {SECTIONS} or all")
    parser.add_argument("--json", type=Path, default=None, help="write every result here (after each section)")
    parser.add_argument("--budget-s", type=float, default=None, help="skip what would start after this")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--train-variants", nargs="+", default=EAGER, choices=list(VARIANTS))
    parser.add_argument("--profile-widths", type=int, nargs="+", default=None, help="default: --widths")
    parser.add_argument("--profile-compiled", action="store_true", help="profile 3 steps of each compiled variant")
    parser.add_argument("--batch-per-width", type=json.loads, default={}, help='e.g. {"64": 64}')
    parser.add_argument(
        "--compile-plan",
        type=json.loads,
        default=[[64, "bf16-mixed + channels_last + compile"], [16, "bf16-mixed + channels_last + compile"]],
        help="[[width, compiled variant], ...] for the compile2d section, in this order",
    )
    parser.add_argument("--compile-reserve-s", type=float, default=60.0)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--demo-config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--demo-root", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--demo-precision", nargs="+", default=["32-true"])
    parser.add_argument("--demo-extra", default="", help="more segpipe fit arguments, one string")
    parser.add_argument("--demo-tmp", default="/tmp/segpipe-gpu-demo")
    parser.add_argument("--demo-timeout-s", type=float, default=240.0)
    parser.add_argument(
        "--unet3d-kwargs",
        type=json.loads,
        default={"depth": 4, "base_channels": 32, "norm": "instance", "upsample": "interp", "padded": True},
    )
    parser.add_argument("--patch3d", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--batch3d", type=int, default=2)
    parser.add_argument("--classes3d", type=int, default=4)
    parser.add_argument("--steps3d", type=int, default=5)
    parser.add_argument("--precision3d", nargs="+", default=["32", "bf16"])
    parser.add_argument("--volume", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--sw-batch", type=int, default=4)
    parser.add_argument("--sliding-repeats", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 4, 8])
    parser.add_argument("--loader-epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for logs and the profile")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.sections is None:
        table_mode(args, device)
        return

    sections = list(SECTIONS) if "all" in args.sections else [s for s in SECTIONS if s in args.sections]
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.budget_s)
    results: dict[str, Any] = {"environment": environment(device), "command": command_line(), "errors": {}}
    print(json.dumps(results["environment"]), flush=True)
    for section in sections:
        if deadline.left() < 15:
            results["errors"][section] = "skipped: budget"
            continue
        began = time.perf_counter()
        try:
            if section == "matmul":
                section_matmul(args, device, results)
            elif section == "train2d":
                train_rows(args, device, results, args.train_variants, args.widths, deadline, "train2d")
            elif section == "compile2d":
                for width, name in args.compile_plan:
                    train_rows(args, device, results, [name], [int(width)], deadline, "compile2d")
            elif section == "demo":
                section_demo(args, device, results, args.out)
            elif section == "unet3d":
                section_unet3d(args, device, results)
            elif section == "sliding":
                section_sliding(args, device, results)
            elif section == "loader":
                section_loader(args, device, results)
            elif section == "profile":
                section_profile(args, device, results, args.out)
        except Exception as err:  # keep going: one broken section must not cost the others
            results["errors"][section] = repr(err)[:1000]
            print(f"section {section} failed: {err!r}", flush=True)
        results.setdefault("section_seconds", {})[section] = time.perf_counter() - began
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(["=== summary ===", *summary_lines(results)]), flush=True)


def gpu_description(device: torch.device) -> str:
    """``<GPU>, driver <version>, torch <version>, lightning <version>`` (the machine's CPU when not on a GPU)."""

    env = environment(device)
    if "gpu" not in env:
        return f"{env['machine']}, lightning {env['lightning']}"
    return f"{env['gpu']}, driver {env['driver'].split(',')[0]}, torch {env['torch']}, lightning {env['lightning']}"


def table_mode(args: argparse.Namespace, device: torch.device) -> None:
    """The table: ``--variants`` of the ``--model-kwargs`` network, appended to docs/benchmarks.md."""
    flops = train_flops_2d(args, args.model_kwargs)
    machine = gpu_description(device)
    rows = []
    for name in args.variants:
        variant = VARIANTS[name]
        r = measure_variant(args, device, variant)
        seconds = r["seconds"]
        images = args.batch / seconds
        achieved = images * flops / 1e12
        peak = peak_for(device, str(variant["precision"]), args.peak_tflops)
        fraction = f"{achieved / peak:.1%}" if peak else "n/a"
        memory = f"{r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else "-"
        compiled = f"{r['first_step_s']:.0f} s / {r['graph_breaks']}" if "graph_breaks" in r else "-"
        rows.append(
            f"| {dt.date.today()} | {machine} | `{command_line()}` | {args.model_kwargs.get('base_channels', '')} | "
            f"{name} | {args.batch}x1x{args.size}x{args.size} | {images:.0f} | {seconds * 1000:.1f} | "
            f"{flops / 1e9:.1f} | {achieved:.1f} | {peak if peak else 'n/a'} | {fraction} | - | {memory} | {compiled} |"
        )
        print(f"{name}: {images:.1f} images/s, {achieved:.2f} TFLOP/s, fraction of peak {fraction}", flush=True)
    publish(HEADING, TABLE_HEADER, rows, INTRO, record=not args.no_record)


if __name__ == "__main__":
    main()
