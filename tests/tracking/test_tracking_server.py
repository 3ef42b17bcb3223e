"""Against a real ``mlflow server`` (SQLite backend, separate artifact root, served artifacts) on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import mlflow.pytorch
import pytest
import torch
from builders import tiny_config, wait_for_mlflow, write_config
from lightning.pytorch.callbacks import Callback

from segpipe.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """One server for the module (it takes most of a minute to start on a small machine); the last test
    of the module kills it."""
    port = free_port()
    store = tmp_path_factory.mktemp("server")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
    command += ["--serve-artifacts", "--artifacts-destination", str(store / "artifacts")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_mlflow(uri, proc)
    except RuntimeError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    yield uri, proc, store
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture
def tracking(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, subprocess.Popen, Path]:
    uri = server[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # A dead server must fail fast in the test (the defaults retry for minutes).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri(uri)
    return server


class StopServerAtEpoch(Callback):
    """Kill the tracking server (its process group) after validation of ``epoch``."""

    def __init__(self, pid: int, epoch: int) -> None:
        self.pid = pid
        self.epoch = epoch

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            os.killpg(self.pid, signal.SIGKILL)
            time.sleep(1)


@pytest.mark.slow
def test_fit_logs_params_metrics_figures_and_model_to_a_server(tracking, flat_dataset: Path, tmp_path: Path):
    store = tracking[2]
    config = write_config(tmp_path / "tiny.yaml", tiny_config(flat_dataset, overlays={"every_n_epochs": 1}))
    assert main(["fit", "--config", str(config), "--trainer.max_epochs", "2"]) == 0

    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["depth"] == "2" and "fingerprint" in run.data.params
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/dice")) == 2
    overlays = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "figures/overlays")}
    assert overlays == {"figures/overlays/epoch_000.png", "figures/overlays/epoch_001.png"}
    reports = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "reports")}
    assert reports == {"reports/test_cases.csv", "reports/test_summary.csv"}
    assert any((store / "artifacts").rglob("epoch_001.png"))  # stored under the artifact root
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert model(torch.zeros(1, 1, 37, 33)).shape == (1, 3, 37, 33)


@pytest.mark.slow
def test_training_survives_the_server_going_away(tracking, flat_dataset: Path, tmp_path: Path, capsys):
    """Last in the module: kills the shared server."""
    uri, proc, _ = tracking
    config = tiny_config(flat_dataset, overlays={"every_n_epochs": 1}, model_logging={"enabled": False})
    config["trainer"]["callbacks"] = [
        {"class_path": f"{__name__}.StopServerAtEpoch", "init_args": {"pid": proc.pid, "epoch": 0}}
    ]
    path = write_config(tmp_path / "tiny.yaml", config)
    with pytest.warns(UserWarning, match="training continues"):
        assert main(["fit", "--config", str(path), "--trainer.max_epochs", "3"]) == 0
    names = {p.name for p in Path("outputs").rglob("*.ckpt")}
    assert "last.ckpt" in names and any(n.startswith("best-epoch") for n in names)
    out = capsys.readouterr().out
    assert f"MLflow at {uri} did not record" in out and "metrics" in out
