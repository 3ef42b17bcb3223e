"""Volume training resumes mid-epoch with exactly the batches, and patches, the epoch had left."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import loader_epoch, same_batches, write_volumes
from monai.data import list_data_collate

from segpipe.data import VolumeDataModule
from segpipe.data.resumable import ResumableDataLoader
from segpipe.distributed import TrainingSampler


@pytest.fixture(autouse=True)
def run_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")


def train_loader(root: Path, cache: str, workers: int = 0) -> ResumableDataLoader:
    dm = VolumeDataModule(
        root=str(root), val_fraction=0.0, patch_size=(8, 8, 8), samples_per_volume=2, batch_size=2,
        num_workers=workers, cache=cache, cache_dir=str(root.parent / "cache"),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader()


@pytest.mark.parametrize(("cache", "workers"), [("none", 0), ("memory", 0), ("disk", 2)])
def test_a_resumed_volume_epoch_yields_exactly_the_batches_it_had_left(tmp_path: Path, cache: str, workers: int):
    root = write_volumes(tmp_path / "data", n=6)
    reference = train_loader(root, cache)
    assert isinstance(reference, ResumableDataLoader) and isinstance(reference.sampler, TrainingSampler)
    assert reference.collate_fn is list_data_collate
    uninterrupted = loader_epoch(reference, 1)  # 6 volumes, 3 batches of 2 volumes x 2 patches
    assert len(uninterrupted) == 3 and all(batch["image"].shape[0] == 4 for batch in uninterrupted)
    other_epoch = loader_epoch(train_loader(root, cache), 0)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(uninterrupted, other_epoch, strict=True))
    resumed = train_loader(root, cache, workers)
    rest = loader_epoch(resumed, 1, {"epoch": 1, "batches": 1, "batch_size": 2})
    assert same_batches(rest, uninterrupted[1:])  # the same volumes and the same patches, any number of workers
    assert resumed.state_dict() == {"epoch": 1, "batches": 3, "batch_size": 2}
    assert same_batches(loader_epoch(resumed, 1), uninterrupted)  # only the first pass after loading skips
