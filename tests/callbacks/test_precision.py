"""Precision and speed options from YAML, run on the CPU; GPU-only paths refused with one line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml
from builders import ddp_config, write_dataset
from lightning.pytorch import Trainer
from torch import nn

from segpipe.callbacks import PerformanceFlags, scaling_statement
from segpipe.cli import main
from segpipe.cli.fit import run_cli
from segpipe.errors import SegpipeError
from segpipe.tasks import SegmentationTask


@pytest.fixture
def tiny_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_dataset(tmp_path / "data" / "train", n=4, seed=1)
    write_dataset(tmp_path / "data" / "val", n=3, seed=2)
    config = ddp_config(tmp_path / "data", "precision")
    config["trainer"].update({"max_epochs": 1, "logger": False})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, *args: str):
    return run_cli(["fit", "--config", str(config), "--test_after_fit", "false", *args])


def test_bf16_mixed_trains_on_cpu(tiny_yaml: Path):
    cli = fit(tiny_yaml, "--trainer.precision", "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.trainer.state.finished and 0.0 <= float(cli.trainer.callback_metrics["val/dice"]) <= 1.0
    assert next(cli.model.parameters()).dtype == torch.float32  # mixed: weights stay float32


def test_16_mixed_on_cpu_falls_back_to_bf16_with_a_warning(tiny_yaml: Path):
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU. Using `precision='bf16-mixed'`"):
        cli = fit(tiny_yaml, "--trainer.precision", "16-mixed")
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.state.finished


def test_channels_last_converts_weights_and_batches(tiny_yaml: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored afterwards
    cli = fit(tiny_yaml, "--performance.channels_last", "true", "--trainer.benchmark", "true")
    assert torch.backends.cudnn.benchmark is True  # trainer.benchmark sets cuDNN autotuning (a no-op on CPU)
    conv = next(m for m in cli.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    batch = {"image": torch.zeros(2, 1, 37, 33)}
    PerformanceFlags(channels_last=True).on_train_batch_start(cli.trainer, cli.model, batch, 0)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)


def test_channels_last_refuses_a_3d_model():
    task = SegmentationTask(spatial_dims=3, model_kwargs={"depth": 2, "base_channels": 4})
    with pytest.raises(SegpipeError, match="channels_last applies to 2D models; this one has spatial_dims 3"):
        PerformanceFlags(channels_last=True).setup(Trainer(logger=False), task, "fit")


def test_sync_batchnorm_on_cpu_is_refused_with_one_line():
    task = SegmentationTask(model_kwargs={"depth": 2, "base_channels": 4, "norm": "batch"})
    task = nn.SyncBatchNorm.convert_sync_batchnorm(task)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(SegpipeError, match=r"^trainer.sync_batchnorm needs GPUs") as err:
        PerformanceFlags().on_fit_start(trainer, task)
    assert "\n" not in str(err.value)
    PerformanceFlags().on_fit_start(Trainer(accelerator="cpu", logger=False), task)  # 1 process: plain BN


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_is_refused_with_one_line(tiny_yaml: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["fit", "--config", str(tiny_yaml), "--trainer.accelerator", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segpipe: error: trainer: No supported gpu backend found! (0 CUDA GPU(s) visible;")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_scaling_statement_names_every_factor_and_does_not_rescale():
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", accumulate_grad_batches=3, logger=False)
    assert scaling_statement(trainer, batch_size=4, lr=0.001) == (
        "effective batch size 24 = batch_size 4 x 2 processes (2 devices x 1 nodes) x accumulate_grad_batches 3; "
        "learning rate 0.001 is used as configured (segpipe does not rescale it); the linear scaling rule "
        "would use 0.001 x 6 = 0.006"
    )


@pytest.mark.slow  # about 70 s of inductor compilation on 2 shared cores
def test_compile_trains_on_cpu_and_keeps_checkpoint_keys(tiny_yaml: Path):
    start = time.perf_counter()
    cli = fit(tiny_yaml, "--performance.compile", "true")
    assert cli.trainer.state.finished
    assert cli.model.net._compiled_call_impl is not None
    assert all(not key.startswith("net._orig_mod") for key in cli.model.state_dict())
    print(f"compile fit: {time.perf_counter() - start:.1f} s")
