"""Does the data pipeline keep up with the model? Images/s the DataModule delivers vs images/s training consumes.

    uv run python benchmarks/loader.py [--config configs/demo.yaml] [--workers 0 1 2] [--epochs 3]

- **loader**: the config's DataModule (its files, augmentations and normalisation, as `segpipe fit`
  builds them) is iterated alone for ``--epochs`` epochs of its training DataLoader at each worker count
  of ``--workers`` (the config's own count is always measured); the first epoch (worker start-up, page
  cache) is left out.
- **model**: training steps (forward, loss, backward, AdamW) of the config's network on one batch of the
  same size, after warm-up; images/s = batch size / median step time.

The ratio loader / model is reported per worker count (target: >= 1.5 at the config's count), and the
smallest worker count that reaches 1.5x is recommended. On a machine with few cores the workers compete
with the training process for them, so a ratio measured alone is an upper bound.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, command_line, machine_description, publish, resolved_config

from segpipe.losses import SegmentationLoss
from segpipe.models import build_model

HEADING = "## Loader: images/s delivered vs consumed"
TABLE_HEADER = (
    "| date | machine | command | config | batch | workers | loader img/s | model img/s | loader / model |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)
INTRO = (
    "Images per second the config's DataModule delivers (its training DataLoader alone, augmentations "
    "and normalisation included, epochs after the first) vs images per second a training step consumes "
    "(`benchmarks/loader.py`; target loader >= 1.5x the model)."
)
TARGET = 1.5


def build_datamodule(config: dict[str, Any], num_workers: int) -> Any:
    data = config["data"]
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    datamodule = cls(**{**data.get("init_args", {}), "num_workers": num_workers})
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def loader_rate(config: dict[str, Any], num_workers: int, epochs: int) -> tuple[float, int]:
    """Images/s over the epochs after the first, and the batch size."""
    datamodule = build_datamodule(config, num_workers)
    loader = datamodule.train_dataloader()
    images, seconds = 0, 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        count = sum(len(batch["image"]) for batch in loader)
        if epoch > 0:
            images += count
            seconds += time.perf_counter() - start
    return images / seconds, datamodule.batch_size


def model_rate(config: dict[str, Any], batch: dict[str, torch.Tensor], steps: int = 12, warmup: int = 3) -> float:
    model_cfg = config["model"]
    net = build_model(
        model_cfg["model"],
        model_cfg.get("spatial_dims", 2),
        model_cfg["in_channels"],
        model_cfg["num_classes"],
        **model_cfg.get("model_kwargs", {}),
    ).train()
    criterion = SegmentationLoss(model_cfg.get("loss", "dice_ce"), model_cfg["num_classes"])
    optimizer = torch.optim.AdamW(net.parameters(), **model_cfg["optimizer"]["init_args"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(net(batch["image"]), batch["mask"]).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return len(batch["image"]) / statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="loader epochs per worker count (first not timed)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()

    config = resolved_config(args.config)
    default_workers = int(config["data"].get("init_args", {}).get("num_workers", 2))
    workers = sorted({*args.workers, default_workers})
    first = build_datamodule(config, 0).train_dataloader()
    batch = next(iter(first))
    model = model_rate(config, batch)
    rows, recommended = [], None
    for count in workers:
        rate, batch_size = loader_rate(config, count, args.epochs)
        ratio = rate / model
        if recommended is None and ratio >= TARGET:
            recommended = count
        mark = " (config)" if count == default_workers else ""
        shape = "x".join(map(str, batch["image"].shape[1:]))
        rows.append(
            f"| {dt.date.today()} | {machine_description()} | `{command_line()}` | {args.config.name} | "
            f"{batch_size}x{shape} | {count}{mark} | {rate:.1f} | {model:.1f} | {ratio:.2f} |"
        )
        print(f"workers {count}{mark}: loader {rate:.1f} img/s, model {model:.1f} img/s, ratio {ratio:.2f}")
    if recommended is None:
        print(f"no worker count in {workers} reaches {TARGET}x the model: the loader is the bottleneck")
    else:
        print(f"recommendation: num_workers: {recommended} (the fewest that deliver >= {TARGET}x what the model uses)")
    publish(HEADING, TABLE_HEADER, rows, INTRO, record=not args.no_record)


if __name__ == "__main__":
    main()
