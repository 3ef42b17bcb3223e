"""Multi-process (DDP, gloo, CPU) runs: same validation metrics as one process, one MLflow run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from builders import ddp_config, free_port, launch_env, runs, write_classes, write_dataset
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Trainer
from torch.utils.data import DistributedSampler

from segpipe.cli import main
from segpipe.data import FolderDataModule
from segpipe.data.modules.classification import ClassificationFolderDataModule
from segpipe.distributed import (
    TrainingSampler,
    UnrepeatedDistributedSampler,
    evaluation_sampler,
    is_local_zero,
    training_sampler,
)

VAL_CASES = 5  # odd: a padding sampler would count one case twice on 2 processes
TEST_CASES = 3


@pytest.mark.parametrize("size,world", [(5, 2), (7, 3), (1, 2), (6, 2)])
def test_unrepeated_sampler_reads_every_case_once(size: int, world: int):
    dataset = list(range(size))
    shards = [list(UnrepeatedDistributedSampler(dataset, world, rank)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == dataset
    assert [len(UnrepeatedDistributedSampler(dataset, world, r)) for r in range(world)] == list(map(len, shards))
    padded = [list(DistributedSampler(dataset, world, rank, shuffle=False)) for rank in range(world)]
    assert sum(map(len, padded)) == size + (-size) % world  # what Lightning's default would read


def test_folder_val_and_test_loaders_shard_without_repeats(split_dataset: Path):
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched: rank 0
    datamodule = FolderDataModule(root=str(split_dataset), batch_size=2, num_workers=0)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):  # 3 cases each
        assert isinstance(loader.sampler, UnrepeatedDistributedSampler) and list(loader.sampler) == [0, 2]
        assert not trainer._data_connector._requires_distributed_sampler(loader)  # Lightning keeps it
    assert evaluation_sampler(datamodule.datasets["val"], None) is None
    assert evaluation_sampler(datamodule.datasets["val"], Trainer(accelerator="cpu", logger=False)) is None


def test_classification_loaders_use_the_ddp_samplers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched: rank 0
    root = write_classes(tmp_path / "classes", per_class=5)
    datamodule = ClassificationFolderDataModule(root=str(root), val_fraction=0.4, batch_size=2, num_workers=0)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    val = datamodule.val_dataloader()  # 2 images per class: 4
    assert isinstance(val.sampler, UnrepeatedDistributedSampler) and list(val.sampler) == [0, 2]
    train = datamodule.train_dataloader()  # 6 images: 3 per rank, batches of 2, the ragged one dropped
    assert type(train.sampler) is TrainingSampler and train.drop_last
    assert (train.sampler.num_replicas, train.sampler.rank, train.sampler.seed) == (2, 0, 5)
    assert list(train.sampler) == list(training_sampler(datamodule.datasets["train"], trainer))
    assert len(list(train.sampler)) == 3 and len(train) == 1
    for loader in (val, train):
        assert not trainer._data_connector._requires_distributed_sampler(loader)  # Lightning keeps it


def test_slurm_variables_of_the_sbatch_example_give_lightning_its_ranks(monkeypatch: pytest.MonkeyPatch):
    # What srun sets for task 5 of docs/cluster.md's job (2 nodes x 4 tasks); Lightning reads it itself.
    slurm = {"NTASKS": "8", "NTASKS_PER_NODE": "4", "NNODES": "2", "PROCID": "5", "LOCALID": "1", "NODEID": "1"}
    slurm |= {"JOB_ID": "42", "JOB_NAME": "segpipe", "NODELIST": "gpu[07-08]"}
    for key, value in slurm.items():
        monkeypatch.setenv(f"SLURM_{key}", value)
    for exported in ("MASTER_ADDR", "MASTER_PORT"):  # SLURMEnvironment exports them: undone after the test
        monkeypatch.setenv(exported, "")
        monkeypatch.delenv(exported)
    # The Trainer sets the process-wide rank of rank_zero_only (to 5): restore it, or later tests warn nothing.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    trainer = Trainer(accelerator="cpu", devices=4, num_nodes=2, strategy="ddp", logger=False)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.main_address == "gpu07"
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (8, 5, 1, 1)
    assert not is_local_zero(trainer)  # only local rank 0 of each node prepares the data
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert is_local_zero(trainer)


def test_two_ranks_training_batches_together_are_the_one_process_batches(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    dataset = list(range(8))
    one = list(training_sampler(dataset, None))
    assert sorted(one) == dataset and one != dataset
    rank0, rank1 = (list(training_sampler(dataset, SimpleNamespace(world_size=2, global_rank=r))) for r in (0, 1))
    for k in range(2):  # 1 process, batch 4 == 2 processes, batch 2 each
        assert sorted(one[4 * k : 4 * k + 4]) == sorted(rank0[2 * k : 2 * k + 2] + rank1[2 * k : 2 * k + 2])


COUNTING_MODULE = """
import os
from lightning.fabric.utilities.rank_zero import rank_zero_only
from segpipe.data import FolderDataModule
from segpipe.data.modules.classification import ClassificationFolderDataModule

class CountingFolderDataModule(FolderDataModule):
    def prepare_data(self):
        with open(os.environ["PREPARE_LOG"], "a") as log:
            log.write(f"{rank_zero_only.rank}\\n")
        super().prepare_data()
"""


def report_rows(run) -> list[dict[str, str]]:
    """The rows of the run's ``reports/test_cases.csv``."""
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reports/test_cases.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def val_metrics(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith("val/")}


@pytest.mark.slow
def test_two_process_fit_then_validate_matches_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "data"
    write_dataset(data / "train", n=8, seed=1)
    write_dataset(data / "val", n=VAL_CASES, seed=2)
    write_dataset(data / "test", n=TEST_CASES, seed=3)  # fit then tests the best checkpoint on 2 processes
    config = ddp_config(data, "fit2")
    config["data"]["class_path"] = "counting.CountingFolderDataModule"
    (tmp_path / "counting.py").write_text(COUNTING_MODULE)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    env = launch_env(tmp_path)

    # fit on 2 processes started by Lightning (it re-runs this command with LOCAL_RANK=1)
    command = [sys.executable, "-m", "segpipe.cli", "fit", "--config", "ddp.yaml"]
    command += ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    fit = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "effective batch size 4 = batch_size 2 x 2 processes (2 devices x 1 nodes)" in fit.stdout + fit.stderr
    (fit_run,) = runs(tmp_path, "fit2")  # exactly one run, from rank 0
    assert fit_run.info.status == "FINISHED"
    assert fit_run.data.params["scale.effective_batch_size"] == "4"
    assert len(mlflow.MlflowClient().get_metric_history(fit_run.info.run_id, "val/dice")) == 2
    # The data were checked and prepared by rank 0 only: the CLI's check, then Lightning's hook (fit, test).
    assert (tmp_path / "prepare.log").read_text().split() == ["0", "0", "0"]
    fit_cases = report_rows(fit_run)
    assert [row["case"] for row in fit_cases] == [f"case_{i:02d}" for i in range(TEST_CASES) for _ in range(2)]
    (last,) = (tmp_path / "outputs").rglob("last.ckpt")

    # validate the last checkpoint on 2 "nodes" of 1 process each, as torchrun starts them on a cluster
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    torchrun += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "segpipe-test"]
    torchrun += ["-m", "segpipe.cli", "validate", "--config", "ddp.yaml", "--ckpt_path", str(last)]
    torchrun += ["--trainer.devices", "1", "--trainer.num_nodes", "2"]
    torchrun += ["--trainer.logger.init_args.experiment_name", "validate2"]
    agents = [
        subprocess.Popen(
            torchrun,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for agent in agents:
        output, _ = agent.communicate(timeout=400)
        assert agent.returncode == 0, output[-3000:]
    (run2,) = runs(tmp_path, "validate2")

    # ... and on 1 process, in this one
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "PREPARE_LOG"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["validate", "--config", "ddp.yaml", "--ckpt_path", str(last)]
    assert main([*args, "--trainer.logger.init_args.experiment_name", "validate1"]) == 0
    (run1,) = runs(tmp_path, "validate1")

    # ... and fit on 1 process with the same global batch (4) and seed
    fit1_args = ["fit", "--config", "ddp.yaml", "--data.init_args.batch_size", "4"]
    assert main([*fit1_args, "--trainer.logger.init_args.experiment_name", "fit1"]) == 0
    (fit1,) = runs(tmp_path, "fit1")
    for key in val_metrics(fit1).keys() - {"val/loss"}:
        assert val_metrics(fit_run)[key] == pytest.approx(val_metrics(fit1)[key], rel=1e-5, abs=1e-6), key
    # The per-case test report of 2 processes holds every test case once, as that of 1 process does.
    one_cases = report_rows(fit1)
    assert [(r["case"], r["class"]) for r in fit_cases] == [(r["case"], r["class"]) for r in one_cases]
    for two_row, one_row in zip(fit_cases, one_cases, strict=True):
        assert float(two_row["dice"]) == pytest.approx(float(one_row["dice"]), rel=1e-5, abs=1e-6)

    one, two = val_metrics(run1), val_metrics(run2)
    assert {"val/dice", "val/loss", "val/dice_class1", "val/iou_class2"} <= set(one)
    assert two.keys() == one.keys()
    assert 0.0 < one["val/dice_class0"] < 1.0 and 0.0 < one["val/dice"] < 1.0
    # val/loss is a `self.log(sync_dist=True)` mean: Lightning 2.6 floors the batch count when ranks
    # hold different numbers of cases (Lightning-AI/pytorch-lightning#21859), so it is not compared.
    for key in one.keys() - {"val/loss"}:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    # The fit's last validation saw the same weights and the same cases.
    assert fit_run.data.metrics["val/dice"] == pytest.approx(one["val/dice"], rel=1e-5)
