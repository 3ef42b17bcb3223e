"""The disk cache of preprocessed volumes: equality, hits, invalidation, damage, concurrent workers."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from builders import AFFINE, blob_case, write_volumes
from lightning.pytorch.trainer.states import TrainerFn
from monai.data import DataLoader, MetaTensor
from monai.transforms import Compose

import segpipe.data.sources.volume_cases as volume_cases
from segpipe.data import VolumeDataModule
from segpipe.data.volume_datasets import PreprocessedVolumeDataset
from segpipe.errors import DataError
from segpipe.io.volumes import write_volume
from segpipe.preprocessing.cache import META_KEY, VolumeCache
from segpipe.preprocessing.plan import PreprocessingPlan


def disk_module(root: Path, **kwargs) -> VolumeDataModule:
    options = {"val_fraction": 0.25, "patch_size": (8, 8, 8), "num_workers": 0, "cache": "disk", **kwargs}
    return VolumeDataModule(root=str(root), **options)


def uncached(dm: VolumeDataModule, case) -> dict:
    return Compose(dm.preprocessing())({"case": case})


def assert_same_item(cached: dict, reference: dict) -> None:
    assert cached.keys() == reference.keys()
    for key, value in reference.items():
        assert type(cached[key]) is type(value), key
        if isinstance(value, np.ndarray | torch.Tensor):
            assert cached[key].dtype == value.dtype and cached[key].shape == value.shape, key
            assert np.array_equal(np.asarray(cached[key]), np.asarray(value)), key
        elif isinstance(value, dict):  # e.g. the geometry record
            assert_same_item(cached[key], value)
        else:
            assert cached[key] == value, key
        if isinstance(value, MetaTensor):
            assert np.array_equal(np.asarray(cached[key].affine), np.asarray(value.affine))


class CountingReads:
    """Replace the volume readers of :mod:`segpipe.data.sources.volume_cases` and count the files read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        for name in ("read_volume", "read_label"):
            original = getattr(volume_cases, name)
            monkeypatch.setattr(volume_cases, name, self._counting(original))

    def _counting(self, reader):
        def read(path: Path):
            self.paths.append(Path(path))
            return reader(path)

        return read


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_volumes(tmp_path / "data", n=4)


# ---- what an entry holds ---------------------------------------------------------------------------
def test_cached_item_equals_the_uncached_item_and_is_stored_compactly(data: Path):
    dm = disk_module(data)
    dm.prepare_data()
    cache = dm.volume_cache()
    for case in (c for split in dm.cases().values() for c in split):
        assert_same_item(cache.load(case), uncached(dm, case))
        with np.load(cache.entry(case)) as archive:
            dtypes = {str(archive[k].dtype) for k in archive.files if k != META_KEY}
        assert dtypes == {"float32", "int8", "float64"}  # image, mask (int64 in memory, 0..2), affine
    (entry,) = [p for p in cache.folder.glob("case_00-*.npz")]
    assert entry.stat().st_size < 24 * 20 * 16 * (4 + 2)  # float32 image + narrow labels, uncompressed
    assert (cache.folder / "signature.json").is_file()
    assert (data / ".segpipe_cache") in cache.folder.parents


def test_nested_items_round_trip_and_unsupported_values_are_named(tmp_path: Path, data: Path):
    dm = disk_module(data)
    case = dm.cases()["train"][0]
    cache = VolumeCache(tmp_path / "cache", {"x": 1})
    geometry = {"affine": np.eye(4), "spacing": (0.8, 1.2, 2.5), "shape": [24, 20, 16], "box": None}
    item = {"image": torch.arange(6.0).reshape(1, 6), "geometry": geometry, "file": Path("a/b"), "n": np.int16(3)}
    cache.store(case, item)
    loaded = cache.load(case)
    assert loaded["geometry"]["spacing"] == (0.8, 1.2, 2.5) and loaded["geometry"]["shape"] == [24, 20, 16]
    assert loaded["geometry"]["box"] is None and loaded["file"] == Path("a/b")
    assert loaded["n"] == 3 and loaded["n"].dtype == np.int16
    assert np.array_equal(loaded["geometry"]["affine"], np.eye(4)) and loaded["geometry"]["affine"].dtype == np.float64
    torch.testing.assert_close(loaded["image"], item["image"], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"item\['geometry'\]\['meta'\] of type object"):
        cache.store(case, {"geometry": {"meta": object()}})


# ---- hits and invalidation -------------------------------------------------------------------------
def test_a_second_run_reads_no_source_file(data: Path, monkeypatch: pytest.MonkeyPatch):
    reads = CountingReads(monkeypatch)
    first = disk_module(data)
    first.prepare_data()
    assert len(reads.paths) == 8  # 4 cases: image + label each, read once
    reads.paths.clear()

    second = disk_module(data, batch_size=1)  # a new run: a new DataModule on the same data and settings
    second.prepare_data()
    second.setup("fit")
    for _ in range(2):  # two epochs
        train = [b for b in second.train_dataloader()]
        val = [b for b in second.val_dataloader()]
    assert reads.paths == []
    assert sum(len(b["name"]) for b in train) == 3 * 4 and len(val) == 1  # 3 volumes x 4 patches; 1 volume

    uncached_module = disk_module(data, cache="none")
    uncached_module.setup("fit")
    list(uncached_module.val_dataloader())
    assert len(reads.paths) == 2  # the counter sees reads when there is no cache


@pytest.mark.parametrize("change", ["content and size", "mtime only"])
def test_an_entry_is_rebuilt_when_its_source_file_changes(data: Path, monkeypatch: pytest.MonkeyPatch, change: str):
    dm = disk_module(data)
    dm.prepare_data()
    cache = dm.volume_cache()
    case = next(c for c in dm.cases()["train"])
    before = cache.load(case)
    image_file = case.images[0]
    if change == "mtime only":
        stat = image_file.stat()
        os.utime(image_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    else:
        image, _ = blob_case(np.random.default_rng(42))
        write_volume(image_file, image, AFFINE)
    assert not cache.is_fresh(case) and cache.load(case) is None

    reads = CountingReads(monkeypatch)
    dm.prepare_data()
    assert sorted(p.name for p in reads.paths) == sorted([image_file.name, case.label.name])  # only that case
    after = cache.load(case)
    assert_same_item(after, uncached(dm, case))
    same = np.array_equal(np.asarray(after["image"]), np.asarray(before["image"]))
    assert same == (change == "mtime only")


def test_a_changed_preprocessing_signature_uses_other_entries(data: Path, monkeypatch: pytest.MonkeyPatch):
    zscore, raw = disk_module(data), disk_module(data, normalization="none")
    assert zscore.volume_cache().folder != raw.volume_cache().folder
    zscore.prepare_data()
    case = zscore.cases()["train"][0]
    assert not raw.volume_cache().is_fresh(case)
    raw.prepare_data()
    reads = CountingReads(monkeypatch)
    assert_same_item(raw.volume_cache().load(case), uncached(raw, case))
    assert_same_item(zscore.volume_cache().load(case), uncached(zscore, case))
    assert float(raw.volume_cache().load(case)["image"].mean()) > 50  # raw intensities, not z-scores
    assert len(reads.paths) == 4  # the two uncached references only
    # A field of the plan that changes the output changes the key the same way.
    monkeypatch.setattr(PreprocessingPlan, "output_settings", lambda self: {"normalization": "future"})
    assert not disk_module(data).volume_cache().is_fresh(case)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "not a zip"])
def test_a_damaged_entry_is_detected_and_rebuilt(data: Path, damage: str):
    dm = disk_module(data)
    dm.prepare_data()
    cache = dm.volume_cache()
    case = dm.cases()["train"][0]
    entry = cache.entry(case)
    content = bytearray(entry.read_bytes())
    if damage == "truncated":
        content = content[: len(content) // 2]
    elif damage == "flipped byte":  # inside the image values: only the member's CRC-32 notices
        content[len(content) // 3] ^= 0xFF
    elif damage == "empty":
        content = bytearray()
    else:
        content = bytearray(b"not a cache entry" * 10)
    entry.write_bytes(bytes(content))
    with pytest.warns(UserWarning, match="damaged cache entry"):
        assert cache.load(case) is None
    with pytest.warns(UserWarning, match="damaged cache entry"):
        item = cache.get(case, lambda: uncached(dm, case))
    assert_same_item(item, uncached(dm, case))
    assert_same_item(cache.load(case), uncached(dm, case))  # the rebuilt entry is whole again


def test_a_cache_dir_that_cannot_be_written_is_a_data_error(data: Path, tmp_path: Path):
    (tmp_path / "a_file").write_text("")
    dm = disk_module(data, cache_dir=str(tmp_path / "a_file" / "cache"))
    with pytest.raises(DataError, match=r"cannot create the cache folder .*set cache_dir"):
        dm.volume_cache().get(dm.cases()["train"][0], lambda: {"x": np.zeros(2)})


# ---- several readers and writers -------------------------------------------------------------------
class LoggedCache(VolumeCache):
    """A cache that appends the name of every entry it writes to ``log`` (shared by worker processes)."""

    def __init__(self, cache_dir: Path, signature: dict, log: Path) -> None:
        super().__init__(cache_dir, signature)
        self.log = log

    def store(self, case, item, sources=None):
        path = super().store(case, item, sources)
        with open(self.log, "a") as log:
            log.write(f"{case.name} {os.getpid()}\n")
        return path


def test_two_workers_reading_one_case_concurrently_write_it_once(data: Path, tmp_path: Path):
    dm = disk_module(data)
    cases = dm.cases()["train"]
    log = tmp_path / "writes.log"
    cache = LoggedCache(tmp_path / "cache", dm.preprocessing_signature(), log)
    preprocess = Compose(dm.preprocessing())
    # Each case twice in a row: worker 0 reads item 2k and worker 1 item 2k + 1, so on a cold cache both
    # miss the same entry at the same time.
    order = [case for case in cases for _ in range(2)] * 2
    dataset = PreprocessedVolumeDataset(order, preprocess, dm.after_preprocessing(train=False), cache)
    for epoch in range(2):  # cold, then warm
        loader = DataLoader(dataset, batch_size=1, num_workers=2, shuffle=False)
        items = list(loader)
        assert len(items) == len(order)
        for batch, case in zip(items, order, strict=True):
            reference = dm.after_preprocessing(train=False)(uncached(dm, case))
            assert batch["name"] == [case.name]
            torch.testing.assert_close(batch["image"][0], reference["image"], rtol=0, atol=0)
            torch.testing.assert_close(batch["mask"][0], reference["mask"], rtol=0, atol=0)
        writes = log.read_text().split()[::2]
        assert sorted(writes) == sorted(c.name for c in cases), epoch
    assert not list(cache.folder.rglob(".*.tmp*")), "a temporary file was left behind"


def test_prepare_data_caches_the_stage_splits_and_skips_unreadable_cases(data: Path, tmp_path: Path):
    testing = disk_module(data, test_fraction=0.25, cache_dir=str(tmp_path / "test_only"))
    testing.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.TESTING))  # what `trainer.test` sets
    testing.prepare_data()
    splits = testing.cases()
    assert len(splits["test"]) == 1
    assert [c for s in splits.values() for c in s if testing.volume_cache().is_fresh(c)] == splits["test"]

    (data / "labels" / "case_03.nii.gz").write_bytes(b"broken")
    dm = disk_module(data, test_fraction=0.25)
    dm.prepare_data()  # no trainer: every split
    fresh = {c.name for split in dm.cases().values() for c in split if dm.volume_cache().is_fresh(c)}
    assert fresh == {"case_00", "case_01", "case_02"}
    [problem] = dm.check(num_classes=3, in_channels=1)
    assert problem.path.name == "case_03.nii.gz" and "cannot be read" in problem.problem
