"""End to end through the CLI: what a run records in MLflow, and resuming a killed fit into the same run."""

from __future__ import annotations

import csv
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
    params, tags = run.data.params, run.data.tags
    assert run.info.run_name == "unet"  # named after the network when the config gives no run_name
    assert params["model"] == "unet" and "_instantiator" not in params  # LightningCLI's private entries left out
    assert len(params["data.fingerprint"]) == 16
    assert (params["data.n_train"], params["data.n_val"], params["data.n_test"]) == ("6", "3", "3")
    assert int(params["model.params"]) > 0 and params["model.summary_input"] == "1x1x37x33"
    assert tags["version.torch"] == version("torch") and "hardware.platform" in tags
    assert "git.commit" in tags and tags["git.dirty"] in ("true", "false")

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
    assert "test/hd95_class1" in run.data.metrics or any(r["hd95"] == "" for r in rows)
    printed = capsys.readouterr().out
    assert "Test metrics per class" in printed and "class2" in printed

    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    logits = model(torch.zeros(2, 1, 37, 33))
    assert logits.shape == (2, 3, 37, 33)
    best = next(Path("outputs").rglob("best-epoch*.ckpt"))
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
    assert "test/dice" in run.data.metrics
    assert {"reports/test_cases.csv", "reports/test_summary.csv"} <= artifact_paths(run.info.run_id, "reports")
    assert any(a.startswith("config/config-resumed-") for a in artifact_paths(run.info.run_id, "config"))
    assert len(list(Path("outputs").glob("*/*"))) == 1  # one run folder of checkpoints
