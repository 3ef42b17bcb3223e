"""Training patches drawn without MONAI's metadata tracking equal those drawn with it, in every cache mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import write_volumes
from monai.data import CacheDataset, get_track_meta
from monai.transforms import Compose

from segpipe.data import VolumeDataModule
from segpipe.data.volume_datasets import PreprocessedVolumeDataset, UntrackedCacheDataset, untracked_metadata


def draw(dataset, seed: int = 3) -> list[dict]:
    dataset.transform.set_random_state(seed=seed)
    return [patch for index in range(len(dataset)) for patch in dataset[index]]


@pytest.mark.parametrize("cache", ["none", "disk", "memory"])
def test_untracked_training_patches_equal_tracked_ones(tmp_path: Path, cache: str):
    root = write_volumes(tmp_path / "data", n=4)
    dm = VolumeDataModule(
        root=str(root), val_fraction=0.25, patch_size=(8, 8, 8), samples_per_volume=2, num_workers=0, cache=cache,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    untracked = dm.datasets["train"]
    cases = dm.cases()["train"]
    if cache == "memory":
        assert isinstance(untracked, UntrackedCacheDataset) and not untracked.copy_cache
        tracked = CacheDataset([{"case": c} for c in cases], dm.transforms(True), progress=False)
    else:
        assert isinstance(untracked, PreprocessedVolumeDataset) and not untracked.track_meta
        disk = dm.volume_cache() if cache == "disk" else None
        tracked = PreprocessedVolumeDataset(cases, Compose(dm.preprocessing()), dm.after_preprocessing(True), disk)
    patches, references = draw(untracked), draw(tracked)
    assert len(patches) == len(references) == 2 * len(cases)
    for patch, reference in zip(patches, references, strict=True):
        assert patch.keys() == reference.keys() and patch["name"] == reference["name"]
        for key in ("image", "mask"):
            assert type(patch[key]) is torch.Tensor and patch[key].dtype == reference[key].dtype
            torch.testing.assert_close(patch[key], reference[key], rtol=0, atol=0)
        assert patch["mask"].shape == (8, 8, 8) and patch["image"].shape == (1, 8, 8, 8)
    assert get_track_meta(), "the process-wide switch was not restored"
    # The memory cache is not copied per patch, so it must come out of drawing unchanged.
    if cache == "memory":
        again = draw(untracked)
        for patch, reference in zip(again, references, strict=True):
            torch.testing.assert_close(patch["image"], reference["image"], rtol=0, atol=0)


def test_untracked_metadata_restores_the_switch_after_an_error():
    with pytest.raises(RuntimeError), untracked_metadata():
        assert not get_track_meta()
        raise RuntimeError("boom")
    assert get_track_meta()
