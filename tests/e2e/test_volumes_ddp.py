"""VolumeDataModule on several processes: sharded val/test, global-order training batches, one cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from builders import launch_env, runs, tiny_3d_config, write_volumes
from lightning.pytorch import Trainer
from torch.utils.data import DistributedSampler

from segpipe.data import VolumeDataModule
from segpipe.distributed import UnrepeatedDistributedSampler


def test_val_and_test_volumes_are_sharded_without_repeats(tmp_path: Path):
    root = write_volumes(tmp_path / "data", n=10)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched: rank 0
    dm = VolumeDataModule(root=str(root), val_fraction=0.3, test_fraction=0.3, patch_size=(8, 8, 8), num_workers=0)
    dm.trainer = trainer
    dm.setup("fit")
    dm.setup("test")
    for loader in (dm.val_dataloader(), dm.test_dataloader()):  # 3 volumes each
        assert isinstance(loader.sampler, UnrepeatedDistributedSampler) and list(loader.sampler) == [0, 2]
        assert not trainer._data_connector._requires_distributed_sampler(loader)  # Lightning keeps it
    assert isinstance(dm.train_dataloader().sampler, DistributedSampler)


def test_two_ranks_training_volumes_together_are_the_one_process_batches(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    root = write_volumes(tmp_path / "data", n=9)
    options = {"val_fraction": 0.12, "patch_size": (8, 8, 8), "samples_per_volume": 1, "num_workers": 0}

    def volumes_per_step(batch_size: int, trainer) -> list[list[str]]:
        dm = VolumeDataModule(root=str(root), batch_size=batch_size, cache="disk", **options)
        dm.trainer = trainer
        dm.prepare_data()
        dm.setup("fit")
        return [list(batch["name"]) for batch in dm.train_dataloader()]

    one = volumes_per_step(4, None)  # 8 training volumes: 2 steps of 4
    ranks = [volumes_per_step(2, SimpleNamespace(world_size=2, global_rank=r)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 2
    assert sorted(n for step in one for n in step) == sorted(n for r in ranks for step in r for n in step)
    for k in range(2):
        assert sorted(one[k]) == sorted(ranks[0][k] + ranks[1][k])
    assert not set(ranks[0][0] + ranks[0][1]) & set(ranks[1][0] + ranks[1][1])  # each volume on one rank


LOGGED_CACHE_MODULE = """
import os
from segpipe.data import VolumeDataModule
from segpipe.preprocessing.cache import VolumeCache

class LoggedCache(VolumeCache):
    def store(self, case, item, sources=None):
        path = super().store(case, item, sources)
        with open(os.environ["CACHE_LOG"], "a") as log:
            log.write(f"{case.name} {os.getpid()}\\n")
        return path

class LoggedCacheVolumeDataModule(VolumeDataModule):
    def volume_cache(self):
        if self._volume_cache is None:
            self._volume_cache = LoggedCache(self.cache_dir, self.preprocessing_signature())
        return self._volume_cache
"""


@pytest.mark.slow
def test_two_process_fit_builds_the_disk_cache_once(tmp_path: Path):
    data = write_volumes(tmp_path / "data", n=8)
    config = tiny_3d_config(data)
    config["trainer"].update({"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False})
    config["trainer"]["logger"]["init_args"].pop("tracking_uri")
    config["model"]["model_kwargs"]["norm"] = "group"
    config["data"]["class_path"] = "logged_cache.LoggedCacheVolumeDataModule"
    config["data"]["init_args"].update({"cache": "disk", "num_workers": 1, "batch_size": 1})
    (tmp_path / "logged_cache.py").write_text(LOGGED_CACHE_MODULE)
    (tmp_path / "ddp3d.yaml").write_text(yaml.safe_dump(config))
    env = {**launch_env(tmp_path), "CACHE_LOG": str(tmp_path / "cache.log")}
    command = [sys.executable, "-m", "segpipe.cli", "fit", "--config", "ddp3d.yaml", "--trainer.devices", "2"]
    command += ["--trainer.strategy", "ddp", "--model_logging.enabled", "false", "--overlays.every_n_epochs", "0"]
    fit = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    writes = [line.split() for line in (tmp_path / "cache.log").read_text().splitlines()]
    assert sorted(name for name, _ in writes) == [f"case_{i:02d}" for i in range(8)]  # every case, once
    assert len({pid for _, pid in writes}) == 1  # by one process (local rank 0, in prepare_data)
    (run,) = runs(tmp_path, "tests3d")
    assert run.info.status == "FINISHED" and 0.0 <= run.data.metrics["val/dice"] <= 1.0
    assert "test/dice_pooled" in run.data.metrics  # the test split was read from the cache as well
