"""Compare ``segpipe summary``'s memory estimate with the memory a real training step uses.

Builds a model (default: the demo U-Net, 2D, 1 input channel, 3 classes, depth 4, 16 base channels,
batch norm) and runs AdamW training steps on random data of ``--input`` shape:

1. a warm-up step, so that the AdamW moments exist as in any later step;
2. a forward pass alone, whose allocation peak is the activations kept for the backward pass;
3. a full step (forward, cross-entropy, backward, ``optimizer.step()``), whose allocation peak plus
   the memory already resident (weights and AdamW moments) is the training peak.

Peaks are those of PyTorch's allocator: ``torch.cuda.max_memory_allocated`` on a GPU, and on the CPU
the running sum of the allocation / free events recorded by ``torch.profiler`` with
``profile_memory=True`` (``tracemalloc`` does not see PyTorch's allocations). The process peak RSS
above the RSS before the warm-up step (``VmHWM``, reset through ``/proc/self/clear_refs`` where
allowed) is printed as a cross-check; it also holds the allocator's cache and the profiler's buffers,
and misses pages glibc had kept from earlier frees.

The result is printed and appended as a row to ``docs/benchmarks.md`` under
"## Summary: estimated vs measured memory" (``--no-record`` to skip)::

    uv run python benchmarks/summary_memory.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import append_row, machine_description

from segpipe.models import build_model
from segpipe.models.summary import parse_input_shape, summarize

HEADING = "## Summary: estimated vs measured memory"
TABLE_HEADER = (
    "| date | machine | command | model | input | est. forward | meas. forward | ratio | "
    "est. training | meas. training | ratio | peak RSS delta |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
DEFAULT_DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _read_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_allocated(fn: object, device: torch.device) -> int:
    """Peak bytes allocated by PyTorch above the level at entry while ``fn()`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()  # type: ignore[operator]
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # type: ignore[operator]
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def record(doc: Path, row: str) -> None:
    """Append ``row`` to the table under :data:`HEADING` in ``doc``, leaving other sections untouched."""
    append_row(HEADING, TABLE_HEADER, row, doc=doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--spatial-dims", type=int, default=2)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4, help="U-Net depth (unet only)")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--norm", default="batch")
    parser.add_argument("--input", default="8x1x192x224")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to the doc")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    shape = parse_input_shape(args.input)
    kwargs: dict[str, object] = {"base_channels": args.base_channels, "norm": args.norm}
    if args.model == "unet":
        kwargs["depth"] = args.depth
    model = build_model(args.model, args.spatial_dims, args.in_channels, args.num_classes, **kwargs).to(device)
    summary = summarize(model, shape, "32")

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(shape, device=device)
    y = torch.randint(0, args.num_classes, (shape[0], *shape[2:]), device=device)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    def forward_only() -> None:
        out = model(x)
        del out

    rss_before = _rss_kib()
    hwm_reset = _reset_hwm()
    step()  # warm-up: creates the AdamW moments
    optimizer.zero_grad(set_to_none=True)
    measured_forward = peak_allocated(forward_only, device)
    resident = sum(p.numel() * p.element_size() for p in model.parameters()) + _state_bytes(optimizer)
    measured_step = peak_allocated(step, device)
    hwm = _read_hwm_kib()
    measured_training = resident + measured_step
    rss_delta = (hwm - rss_before) * 1024 if hwm_reset and hwm and rss_before else None

    estimated_forward = summary.activation_bytes
    estimated_training = summary.training_bytes_estimate
    forward_ratio = measured_forward / estimated_forward
    training_ratio = measured_training / estimated_training
    command = "uv run python benchmarks/summary_memory.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ""
    )
    model_desc = f"{args.model} {args.spatial_dims}D base {args.base_channels} norm {args.norm}"
    if args.model == "unet":
        model_desc += f" depth {args.depth}"
    print(f"model               {model_desc}, {summary.params:,} parameters")
    print(f"input               {args.input} on {machine_description(device)}")
    print(f"forward  estimated  {_mib(estimated_forward)} (input + layer outputs, float32)")
    print(f"forward  measured   {_mib(measured_forward)} (allocation peak of a forward with autograd)")
    print(f"forward  ratio      {forward_ratio:.3f} measured / estimated")
    print(f"training estimated  {_mib(estimated_training)} (activations + weights + grads + 2 AdamW moments)")
    print(f"training measured   {_mib(measured_training)} (resident {_mib(resident)} + step peak)")
    print(f"training ratio      {training_ratio:.3f} measured / estimated")
    if rss_delta is not None:
        print(f"peak RSS delta      {_mib(rss_delta)} over the steps (allocator cache, profiler included)")
    if not args.no_record:
        row = (
            f"| {dt.date.today().isoformat()} | {machine_description(device)} | `{command}` | {model_desc} | "
            f"{args.input} | {_mib(estimated_forward)} | {_mib(measured_forward)} | {forward_ratio:.2f} | "
            f"{_mib(estimated_training)} | {_mib(measured_training)} | {training_ratio:.2f} | "
            f"{_mib(rss_delta) if rss_delta is not None else 'n/a'} |"
        )
        record(args.doc, row)
        print(f"appended to {os.path.relpath(args.doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
