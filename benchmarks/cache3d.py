"""3D training epoch time without a cache, with the disk cache and with the memory cache, on the same volumes.

    uv run python benchmarks/cache3d.py [--cases 16] [--shape 128 128 64] [--epochs 4] [--workers 0]
        [--patch 32 32 16] [--samples 1] [--base-channels 4] [--accelerator cpu] [--uniform-spacing]

Writes ``--cases`` noisy NIfTI volumes (``.nii.gz``: float32 image, uint8 label with a few spheres) to a
temporary folder, with voxel sizes that vary between cases as they do between scanners (so that the
preprocessing resamples every case to the median spacing; ``--uniform-spacing`` gives all the same size), then
trains the same small 3D U-Net (depth 2) on ``--patch`` patches (``--samples`` per volume, 2 volumes per step)
for ``--epochs`` epochs with ``cache: none``, ``disk`` and ``memory``, in this process (Trainer +
VolumeDataModule, no validation). For each it times the preparation (``prepare_data`` + ``setup``: where the
disk cache is written and the memory cache filled), the first training epoch, the mean of the later ones and the
part of those spent waiting for batches (the data pipeline, when ``--workers 0``). ``disk (next run)`` is a
second run on the cache the first disk run left, which is what every later run of a dataset pays. The model is
kept small so that reading the volumes is a real share of an epoch, as it is when a GPU trains; on a CPU the
network's steps bound the epoch ratio, the data ratio shows the cache's own gain. Rows are appended under "##
Cache: 3D epoch time" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from _record import command_line, machine_description, publish  # benchmarks/ is first on sys.path

from segpipe.data import VolumeDataModule
from segpipe.io.volumes import write_label, write_volume
from segpipe.tasks import SegmentationTask

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Cache: 3D epoch time"
TABLE_HEADER = (
    "| date | machine | command | data and model | cache | preparation s | epoch 1 s | later epochs s "
    "| of which data s | later vs none | data vs none |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
)
INTRO = (
    "`benchmarks/cache3d.py`: the same 3D training without a cache, with the disk cache (first run, which "
    "writes it, and a later run, which only reads it) and with the memory cache. 'of which data' is the time "
    "the loop waited for batches; 'later vs none' compares epochs after the first."
)
SPACING = (0.8, 0.8, 1.5)  # mm, every case's with --uniform-spacing


class EpochTimes(pl.Callback):
    """Seconds from ``start`` to the first training epoch (preparation), then of each training epoch and
    of the part of it spent waiting for batches (from the end of one step to the start of the next)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.preparation = 0.0
        self.epochs: list[float] = []
        self.waits: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.epochs and not self.preparation:
            self.preparation = time.perf_counter() - self.start
        self.epoch_start = self.step_end = time.perf_counter()
        self.waits.append(0.0)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self.waits[-1] += time.perf_counter() - self.step_end

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self.step_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self.epoch_start)


def case_spacing(rng: np.random.Generator, uniform: bool) -> tuple[float, float, float]:
    """The voxel size of one case: :data:`SPACING`, or drawn as scanners and protocols vary (in-plane
    0.6-1.0 mm, slices 1-3 mm), so that preprocessing resamples each case to the median."""
    if uniform:
        return SPACING
    in_plane = float(rng.uniform(0.6, 1.0))
    return in_plane, in_plane, float(rng.uniform(1.0, 3.0))


def write_cases(root: Path, n: int, shape: tuple[int, int, int], uniform: bool, seed: int = 0) -> None:
    """``root/images/case_XXX.nii.gz`` and ``root/labels/case_XXX.nii.gz``: spheres of 2 classes in noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        for _ in range(3):
            centre = [rng.uniform(s * 0.2, s * 0.8) for s in shape]
            radius = rng.uniform(0.08, 0.15) * min(shape)
            inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < radius**2
            label[inside] = rng.integers(1, 3)
        image = (100.0 + 60.0 * label + rng.normal(0, 20, shape)).astype(np.float32)
        affine = np.diag([*case_spacing(rng, uniform), 1.0])
        write_volume(root / "images" / f"case_{i:03d}.nii.gz", image, affine)
        write_label(root / "labels" / f"case_{i:03d}.nii.gz", label, affine)


def run(data: Path, cache: str, cache_dir: Path, args: argparse.Namespace) -> EpochTimes:
    pl.seed_everything(0, verbose=False)
    datamodule = VolumeDataModule(
        root=str(data),
        val_fraction=0.0,
        patch_size=tuple(args.patch),
        samples_per_volume=args.samples,
        batch_size=2,
        num_workers=args.workers,
        cache=cache,
        cache_dir=str(cache_dir),
    )
    task = SegmentationTask(
        spatial_dims=3,
        num_classes=3,
        model_kwargs={"depth": 2, "base_channels": args.base_channels, "norm": "instance"},
    )
    timer = EpochTimes(time.perf_counter())
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(task, datamodule=datamodule)
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=16, help="training volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], help="volume size X Y Z")
    parser.add_argument("--epochs", type=int, default=4, help="the first is reported apart from the later ones")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 32, 16], help="training patch X Y Z")
    parser.add_argument("--samples", type=int, default=1, help="patches per volume")
    parser.add_argument("--base-channels", type=int, default=4, help="U-Net width")
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    parser.add_argument(
        "--uniform-spacing",
        action="store_true",
        help=f"every case {SPACING} mm, so nothing is resampled (default: spacings vary, resampled to the median)",
    )
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    parser.add_argument("--note", default="", help="free text for the table (e.g. machine load)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is reported apart)")
    shape = tuple(args.shape)
    results: dict[str, EpochTimes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data, cache_dir = Path(tmp) / "data", Path(tmp) / "cache"
        write_cases(data, args.cases, shape, args.uniform_spacing)
        megabytes = sum(p.stat().st_size for p in data.rglob("*.nii.gz")) / 2**20
        for name, cache in (("none", "none"), ("disk (first run)", "disk"), ("disk (next run)", "disk")):
            results[name] = run(data, cache, cache_dir, args)
        results["memory"] = run(data, "memory", cache_dir, args)
        cached = sum(p.stat().st_size for p in cache_dir.rglob("*.npz")) / 2**20
    baseline = float(np.mean(results["none"].epochs[1:]))
    baseline_wait = float(np.mean(results["none"].waits[1:]))
    size, patch = "x".join(map(str, shape)), "x".join(map(str, args.patch))
    spacing = f"{SPACING} mm" if args.uniform_spacing else "varied spacing, resampled to the median"
    setup = (
        f"{args.cases} x {size}, {spacing}, {megabytes:.0f} MiB .nii.gz ({cached:.0f} MiB cached); "
        f"U-Net depth 2 base {args.base_channels}, {args.samples} x {patch} per volume, 2 volumes per step, "
        f"{args.workers} workers, {args.accelerator}"
    )
    rows = []
    for name, timer in results.items():
        later, wait = float(np.mean(timer.epochs[1:])), float(np.mean(timer.waits[1:]))
        rows.append(
            f"| {dt.date.today()} | {machine_description()} | `{command_line()}` | {setup} | {name} | "
            f"{timer.preparation:.2f} | {timer.epochs[0]:.2f} | {later:.2f} | {wait:.2f} | {baseline / later:.1f}x | "
            f"{baseline_wait / wait:.1f}x |"
        )
    publish(HEADING, TABLE_HEADER, rows, INTRO, record=not args.no_record)
    speedup = baseline / float(np.mean(results["disk (next run)"].epochs[1:]))
    verdict = "met" if speedup >= 5 else "not met"
    print(f"disk cache: {speedup:.1f}x faster epochs after the first (target >= 5x: {verdict})")


if __name__ == "__main__":
    main()
