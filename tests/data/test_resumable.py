"""The training loader resumes mid-epoch with the batches, and augmentations, the epoch had left."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from builders import loader_epoch, same_batches

from segpipe.data.datasets import SegmentationDataset
from segpipe.data.resumable import ResumableDataLoader
from segpipe.data.sources.pairing import pair_by_stem
from segpipe.distributed import SampleIndex, TrainingSampler, training_sampler
from segpipe.errors import SegpipeError
from segpipe.transforms import build_augmentations

FLIP_AND_CROP = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomCrop", "height": 31, "width": 29}]


def dataset(root: Path, cache: bool = False) -> SegmentationDataset:
    cases = pair_by_stem(root / "images", root / "masks", (".png",), (".png",))
    return SegmentationDataset(cases, build_augmentations(FLIP_AND_CROP), normalization="none", cache=cache)


def loader(root: Path, workers: int = 0) -> ResumableDataLoader:
    data = dataset(root)
    return ResumableDataLoader(data, batch_size=3, sampler=training_sampler(data, None), num_workers=workers)


@pytest.fixture(autouse=True)
def run_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_yields_exactly_the_batches_it_had_left(flat_dataset: Path, workers: int):
    uninterrupted = loader_epoch(loader(flat_dataset), 1)  # 12 cases, 4 batches
    assert len(uninterrupted) == 4 and not same_batches(uninterrupted, loader_epoch(loader(flat_dataset), 0))
    resumed = loader(flat_dataset, workers)
    rest = loader_epoch(resumed, 1, {"epoch": 1, "batches": 2, "batch_size": 3})
    assert same_batches(rest, uninterrupted[2:])  # same cases, same flips and crops, any number of workers
    assert resumed.state_dict() == {"epoch": 1, "batches": 4, "batch_size": 3}
    assert same_batches(loader_epoch(resumed, 1), uninterrupted)  # only the first pass after loading skips


def test_a_state_from_another_epoch_or_batch_size_is_not_skipped(flat_dataset: Path):
    uninterrupted = loader_epoch(loader(flat_dataset), 2)
    assert same_batches(
        loader_epoch(loader(flat_dataset), 2, {"epoch": 1, "batches": 4, "batch_size": 3}), uninterrupted
    )
    with pytest.raises(SegpipeError, match="mid-epoch with batch_size 2, this run has 3"):
        loader(flat_dataset).load_state_dict({"epoch": 2, "batches": 1, "batch_size": 2})


def test_sample_seeds_travel_with_the_indices(monkeypatch: pytest.MonkeyPatch):
    index = pickle.loads(pickle.dumps(SampleIndex(7, 123)))  # as they go to DataLoader workers
    assert index == 7 and index.seed == 123 and isinstance(index, int)
    sampler = TrainingSampler(list(range(10)), num_replicas=1, rank=0, seed=5)
    first, again = list(sampler), list(sampler)
    assert [(int(i), i.seed) for i in first] == [(int(i), i.seed) for i in again]
    sampler.set_epoch(1)
    assert {i.seed for i in first}.isdisjoint(i.seed for i in sampler)
    sampler.skip = 4
    assert list(map(int, sampler)) == list(map(int, list(sampler)[4:])) and len(sampler) == 10


def test_the_dataset_keeps_decoded_images_only_when_asked(flat_dataset: Path):
    for cache, held in ((False, 0), (True, 12)):
        data = dataset(flat_dataset, cache=cache)
        for i in range(len(data)):
            data[i]
        assert len(data._cached) == held  # without `cache`, memory does not grow with the dataset
