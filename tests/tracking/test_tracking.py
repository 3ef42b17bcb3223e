"""End to end through the CLI: what a run records in MLflow, and resuming a killed fit into the same run."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from builders import tiny_config, write_config

from segpipe.cli import main
from segpipe.config import read_config
from segpipe.tracking.config import headline_params, network_name, run_identity
from segpipe.tracking.resume import run_info_from_checkpoint


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def only_run(workdir: Path) -> mlflow.entities.Run:
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    client = mlflow.MlflowClient()
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_fit_records_metadata_figures_test_report_and_a_loadable_model(workdir: Path, flat_dataset: Path, capsys):
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset, overlays={"every_n_epochs": 2}))
    assert main(["fit", "--config", str(config)]) == 0
    run = only_run(workdir)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert run.info.run_name == "data-unet-d2w4-2d"  # dataset folder, network, depth and width, dims
    identity = {"task": "segmentation", "spatial_dims": "2", "network": "unet", "dataset": "data", "modality": "image"}
    assert {key: tags[key] for key in identity} == identity
    description = tags["mlflow.note.content"]
    assert "**data** (image): 6 train, 3 val, 3 test cases" in description
    best = next(Path("outputs").rglob("best-epoch*.ckpt"))
    assert f"checkpoint `{best.name}`" in description and "`test/dice_pooled_*`" in description

    # Headline params only: short names, no None, the whole config as an artifact.
    assert len(params) <= 25 and "None" not in params.values(), params
    assert not [key for key in params if key.startswith("config.") or "/" in key]
    assert {k: params[k] for k in ("network", "depth", "width", "loss", "optimizer", "lr", "batch_size")} == {
        "network": "unet", "depth": "2", "width": "4", "loss": "dice_ce", "optimizer": "AdamW", "lr": "0.01",
        "batch_size": "4",
    }  # fmt: skip
    assert (params["epochs"], params["seed"], params["dataset"], params["scheduler"]) == ("3", "0", "data", "constant")
    assert len(params["fingerprint"]) == 16
    assert (params["n_train"], params["n_val"], params["n_test"]) == ("6", "3", "3")
    assert float(params["params_M"]) > 0 and float(params["gmacs"]) > 0
    metadata = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/run/metadata.json")
    assert metadata["metadata"]["model.summary_input"] == "1x1x37x33"
    assert tags["version.torch"] == version("torch") and "hardware.platform" in tags
    assert "git.commit" in tags and tags["git.dirty"] in ("true", "false")

    # The dataset as the run's input: name, fingerprint as digest, split sizes.
    (dataset_input,) = run.inputs.dataset_inputs
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("data", params["fingerprint"])
    assert {t.key: t.value for t in dataset_input.tags}["n_train"] == "6"

    # Curves by epoch; the best validation Dice and its epoch.
    client = mlflow.MlflowClient()
    dice = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/dice")}
    assert sorted(dice) == [0, 1, 2]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [0, 1, 2]
    assert metrics["val/dice_best"] == pytest.approx(max(dice.values()))
    assert dice[int(metrics["best_epoch"])] == pytest.approx(max(dice.values()))
    assert f"epoch{int(metrics['best_epoch']):03d}" in best.name  # the tested checkpoint is the best one

    # Split-level test scores named pooled; class-index and foreground-mean names beside the class names.
    assert metrics["test/dice_pooled_c1"] == metrics["test/dice_pooled_class1"]
    assert metrics["test/dice_pooled_fg_mean"] == metrics["test/dice_pooled"]
    assert metrics["val/dice_c2"] == metrics["val/dice_class2"] and metrics["val/dice_fg_mean"] == metrics["val/dice"]
    assert "test/dice" not in metrics and "test/iou_pooled_fg_mean" in metrics

    artifacts = artifact_paths(run.info.run_id)
    # every 2 epochs and after the last one (epochs 0..2)
    assert {a for a in artifacts if a.startswith("figures/overlays/")} == {
        "figures/overlays/epoch_001.png",
        "figures/overlays/epoch_002.png",
    }
    assert {"figures/test_boxplots.png", "reports/test_cases.csv", "reports/test_summary.csv"} <= artifacts
    assert "run/metadata.json" in artifacts and "config/config.yaml" in artifacts

    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reports/test_cases.csv")
    with open(local) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2  # 3 test cases x 2 foreground classes
    assert {r["class"] for r in rows} == {"class1", "class2"}
    assert all(r["volume_ref"] and float(r["volume_ref"]) > 0 for r in rows)  # every case has both shapes
    dice = np.array([float(r["dice"]) for r in rows if r["class"] == "class1"])
    assert np.all((dice >= 0) & (dice <= 1))
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reports/test_summary.csv")
    with open(local) as f:
        summary = {(r["class"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(summary["class1", "dice"]["mean"]) == pytest.approx(dice.mean())
    assert float(summary["class1", "dice"]["median"]) == pytest.approx(np.median(dice))
    assert "test/hd95_px_mean_class1" in run.data.metrics or any(r["hd95_px"] == "" for r in rows)
    printed = capsys.readouterr().out
    assert "Test metrics per class" in printed and "class2" in printed

    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    logits = model(torch.zeros(2, 1, 37, 33))
    assert logits.shape == (2, 3, 37, 33)
    state = torch.load(best, weights_only=True)["state_dict"]
    first = next(k for k in state if k.startswith("net."))
    torch.testing.assert_close(model.state_dict()[first.removeprefix("net.")], state[first])


@pytest.mark.slow
def test_killed_fit_resumes_into_the_same_run(workdir: Path, flat_dataset: Path):
    config = tiny_config(flat_dataset, overlays={"every_n_epochs": 0}, model_logging={"enabled": False})
    config["trainer"]["max_epochs"] = 400
    path = write_config(workdir / "tiny.yaml", config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "segpipe.cli", "fit", "--config", str(path)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            last = next(Path("outputs").rglob("last.ckpt"), None) if Path("outputs").exists() else None
            if last is not None:
                try:
                    info = run_info_from_checkpoint(last)
                    if torch.load(last, weights_only=True)["epoch"] >= 1:
                        break
                except (RuntimeError, EOFError, KeyError):
                    pass  # being written
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert last is not None and info is not None, "no checkpoint before the deadline"
    killed = only_run(workdir)
    assert killed.info.status == "RUNNING" and killed.info.run_id == info["run_id"]
    steps_before = max(m.step for m in mlflow.MlflowClient().get_metric_history(killed.info.run_id, "val/dice"))

    resumed_epoch = torch.load(last, weights_only=True)["epoch"]
    args = ["fit", "--config", str(path), "--ckpt_path", str(last), "--trainer.max_epochs", str(resumed_epoch + 3)]
    assert main([*args, "--test_after_fit", "false"]) == 0
    # `segpipe test` on a checkpoint of the run reports into that run too.
    assert main(["test", "--config", str(path), "--ckpt_path", str(last)]) == 0

    run = only_run(workdir)
    assert run.info.run_id == info["run_id"] and run.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/dice")
    assert max(m.step for m in history) > steps_before
    epochs = {m.value for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "epoch")}
    assert set(range(resumed_epoch + 3)) <= {int(e) for e in epochs}
    assert "test/dice_pooled" in run.data.metrics
    assert "checkpoint `last.ckpt`" in run.data.tags["mlflow.note.content"]  # the test of `segpipe test`
    assert {"reports/test_cases.csv", "reports/test_summary.csv"} <= artifact_paths(run.info.run_id, "reports")
    assert any(a.startswith("config/config-resumed-") for a in artifact_paths(run.info.run_id, "config"))
    assert len(list(Path("outputs").glob("*/*"))) == 1  # one run folder of checkpoints


@pytest.mark.parametrize(
    "model,spatial_dims,kwargs,name",
    [
        ("unet", 2, None, "unet"),
        ("fcn", 2, {"variant": "16s", "base_channels": 8}, "fcn16s"),
        ("segnet", 3, {}, "segnet3d"),
        ("encoder_unet", 2, {"encoder": "resnet34"}, "encoder_unet-resnet34"),
    ],
)
def test_network_name_says_which_network(model, spatial_dims, kwargs, name):
    assert network_name(model, spatial_dims, kwargs) == name


def test_run_identity_names_dataset_network_size_and_dims(tmp_path: Path):
    config = {"model": {"model": "unet", "spatial_dims": 3}, "data": {"init_args": {"root": str(tmp_path / "d")}}}
    (tmp_path / "d").mkdir()
    # The builder's defaults fill what the config leaves out (depth 4, 64 base channels).
    assert run_identity(config) == (
        "d-unet-d4w64-3d",
        {"task": "segmentation", "spatial_dims": "3", "network": "unet3d", "dataset": "d", "modality": "image"},
    )
    declaration = {"name": "Hippocampus", "channel_names": {"0": "MRI"}, "labels": {"background": 0}}
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(declaration))
    name, tags = run_identity(config)
    assert name == "Hippocampus-unet-d4w64-3d" and (tags["dataset"], tags["modality"]) == ("Hippocampus", "MRI")
    (tmp_path / "d" / "dataset.json").write_text("{not json")  # the data check reports it, naming the file
    assert run_identity(config)[1]["dataset"] == "d"


def test_headline_params_of_the_demo_are_short_and_never_none():
    params = headline_params(read_config(["--config", "configs/demo.yaml"]).as_dict())
    assert params == {
        "network": "unet", "depth": "4", "width": "16", "norm": "batch", "loss": "dice_ce", "optimizer": "AdamW",
        "lr": "0.003", "weight_decay": "0.0001", "scheduler": "CosineToEnd", "batch_size": "4", "epochs": "30",
        "precision": "32-true", "seed": "0", "dataset": "demo", "normalization": "dataset",
    }  # fmt: skip
    volumes = headline_params(read_config(["--config", "configs/unet3d.yaml"]).as_dict())
    assert volumes["patch_size"] == "32x32x16" and volumes["network"] == "unet3d"
