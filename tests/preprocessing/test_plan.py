"""The preprocessing plan: the cache key follows the fields that change the output, and the plan round-trips."""

from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml
from builders import write_volumes

from segpipe.data import VolumeDataModule
from segpipe.preprocessing.cache import VolumeCache
from segpipe.preprocessing.plan import PreprocessingPlan

PLAN = PreprocessingPlan(
    orientation="RAS",
    spacing=[0.9, 0.7, 2.5],
    crop_nonzero=True,
    crop_margin=[1, 2, 0],
    normalization="ct",
    ct_percentiles=[0.5, 99.5],
    ct_statistics="dataset",
    intensity_statistics={"ct_clip": [[-900.0, 300.0]], "ct_mean": [40.0], "ct_std": [120.0]},
    patch_size=[32, 32, 16],
)


def key(plan: PreprocessingPlan, folder: Path) -> Path:
    return VolumeCache(folder, plan.output_settings()).folder


@pytest.mark.parametrize(
    "change",
    [
        {"orientation": "LPS"},
        {"spacing": [1.0, 0.7, 2.5]},
        {"interpolation_order": 3},
        {"crop_margin": [1, 2, 1]},
        {"normalization": "zscore"},
        {"intensity_statistics": {"ct_clip": [[-900.0, 301.0]], "ct_mean": [40.0], "ct_std": [120.0]}},
        {"ct_mean": 1.0, "ct_std": 2.0},
    ],
)
def test_a_preprocessing_field_changes_the_cache_key(change: dict, tmp_path: Path):
    assert key(replace(PLAN, **change), tmp_path) != key(PLAN, tmp_path)


@pytest.mark.parametrize("change", [{"patch_size": [64, 64, 32]}, {"training_mode": "slices", "slice_axis": 1}])
def test_a_sampling_field_keeps_the_cache_key(change: dict, tmp_path: Path):
    assert key(replace(PLAN, **change), tmp_path) == key(PLAN, tmp_path)


def test_every_field_but_sampling_is_in_the_key():
    sampling = {f.name for f in fields(PreprocessingPlan) if f.metadata.get("sampling")}
    assert sampling == {"patch_size", "training_mode", "slice_axis"}
    assert set(PLAN.output_settings()) == {f.name for f in fields(PreprocessingPlan)} - sampling


def test_the_plan_round_trips_through_yaml():
    assert PreprocessingPlan.from_dict(yaml.safe_load(yaml.safe_dump(PLAN.to_dict()))) == PLAN
    with pytest.raises(ValueError, match=r"unknown preprocessing plan keys \['spacingg'\]"):
        PreprocessingPlan.from_dict({"spacingg": [1, 1, 1]})


def test_the_datamodule_plan_holds_its_resolved_decisions(tmp_path: Path):
    root = write_volumes(tmp_path / "data", n=4)
    dm = VolumeDataModule(root=str(root), patch_size=(8, 8, 8), batch_size=3, num_workers=0)
    plan = dm.plan()
    assert plan.spacing == dm.dataset_statistics()["median_spacing"] and plan.patch_size == [8, 8, 8]
    assert dm.volume_cache().signature == plan.output_settings()
    larger = VolumeDataModule(root=str(root), patch_size=(16, 16, 8), batch_size=1, num_workers=0)
    assert larger.volume_cache().folder == dm.volume_cache().folder  # sampling only: the same entries
    resampled = VolumeDataModule(root=str(root), spacing=(2.0, 2.0, 2.0), num_workers=0)
    assert resampled.volume_cache().folder != dm.volume_cache().folder
