"""Kill a real ``segpipe fit`` at several points, resume it each time with ``--ckpt_path last``: nothing changes.

The reference trains 3 epochs uninterrupted. The same training is then killed with SIGKILL after a step
checkpoint (mid-epoch), during validation and halfway through writing ``last.ckpt``, stopped with
SIGTERM, and resumed after each; its final weights, optimiser state, validation metrics and curves equal
the reference's, in one MLflow run. Faults are injected at exact points by tests/fault_points.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import write_dataset
from test_cli import tiny_config, write_config

from segpipe.cli import main

FAULTS = Path(__file__).with_name("fault_points.py")
STEPS_PER_EPOCH = 5  # 10 training cases, batch 2


def fault_config(data_root: Path) -> dict:
    config = tiny_config(
        data_root,
        checkpoint={"last_every_n_train_steps": 2},
        overlays={"every_n_epochs": 0},
        model_logging={"enabled": False},
        test_after_fit=False,
    )
    config["trainer"].update(max_epochs=3, deterministic=True)
    config["model"]["model_kwargs"]["dropout"] = 0.2  # the resumed run must continue the same random stream
    config["data"]["init_args"].update(
        batch_size=2, test_fraction=0.0, train_transforms=[{"name": "HorizontalFlip", "p": 0.5}]
    )
    return config


def segpipe(workdir: Path, *args: str, fault: str | None = None) -> tuple[subprocess.Popen, Path]:
    """Start ``segpipe <args>`` (through fault_points.py with a fault) in ``workdir``; stderr goes to a file."""
    command = [sys.executable, str(FAULTS), fault] if fault else [sys.executable, "-m", "segpipe.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(FAULTS.parent)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = workdir / f"stderr-{fault or 'run'}.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([*command, *args], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    return proc, log


def finish(started: tuple[subprocess.Popen, Path]) -> tuple[int, str]:
    proc, log = started
    proc.wait(timeout=600)
    return proc.returncode, log.read_text()


def last_checkpoint(workdir: Path) -> tuple[Path, dict]:
    (path,) = (workdir / "outputs").glob("*/*/checkpoints/last.ckpt")
    return path, torch.load(path, map_location="cpu", weights_only=True)


def the_run(workdir: Path) -> mlflow.entities.Run:
    # A client, not mlflow.set_tracking_uri: that also sets MLFLOW_TRACKING_URI, which segpipe would then use.
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


@pytest.mark.slow
def test_killed_and_resumed_fit_ends_exactly_like_an_uninterrupted_one(tmp_path: Path):
    data = write_dataset(tmp_path / "data", n=13)  # 3 validation cases, 10 training cases
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    for folder in (reference, resumed):
        folder.mkdir()
        write_config(folder / "fit.yaml", fault_config(data))
    fit = ("fit", "--config", "fit.yaml")
    uninterrupted = segpipe(reference, *fit)  # alongside the interrupted one (two cores)

    # SIGKILL as step 8 starts: last.ckpt is the step-6 checkpoint, in the middle of epoch 1.
    code, _ = finish(segpipe(resumed, *fit, fault="kill-at-step:7"))
    assert code == -signal.SIGKILL
    assert last_checkpoint(resumed)[1]["global_step"] == 6
    run_id = the_run(resumed).info.run_id

    # Resumed, then SIGKILL in epoch 1's validation: last.ckpt is the step-8 checkpoint.
    code, _ = finish(segpipe(resumed, *fit, "--ckpt_path", "last", fault="kill-in-validation:1"))
    assert code == -signal.SIGKILL
    assert last_checkpoint(resumed)[1]["global_step"] == 8

    # Resumed, then SIGKILL halfway through writing last.ckpt at step 12: the step-10 file (end of epoch 1)
    # is intact, and the half-written temporary file is all that is left of the new one.
    code, _ = finish(segpipe(resumed, *fit, "--ckpt_path", "last", fault="kill-in-write:2"))
    assert code == -signal.SIGKILL
    path, checkpoint = last_checkpoint(resumed)
    assert checkpoint["global_step"] == 2 * STEPS_PER_EPOCH and checkpoint["epoch"] == 1
    assert len(list(path.parent.glob(".last.ckpt.*.tmp"))) == 1

    # Resumed, then SIGTERM as step 13 starts: step 13 finishes, last.ckpt is written, exit 128 + 15.
    code, stderr = finish(segpipe(resumed, *fit, "--ckpt_path", "last", fault="term-at-step:12"))
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("segpipe: error:")]
    assert len(errors) == 1 and "stopped by SIGTERM at epoch 2, step 13" in errors[0], errors
    assert "Traceback" not in stderr
    assert last_checkpoint(resumed)[1]["global_step"] == 13
    assert not list(path.parent.glob(".last.ckpt.*.tmp"))  # the next write removed the stale file

    code, stderr = finish(segpipe(resumed, *fit, "--ckpt_path", "last"))
    assert code == 0, stderr[-2000:]
    code, stderr = finish(uninterrupted)
    assert code == 0, stderr[-2000:]

    expected, got = last_checkpoint(reference)[1], last_checkpoint(resumed)[1]
    assert got["global_step"] == expected["global_step"] == 3 * STEPS_PER_EPOCH
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    for key, value in expected["optimizer_states"][0]["state"].items():
        for name, tensor in value.items():
            torch.testing.assert_close(got["optimizer_states"][0]["state"][key][name], tensor, rtol=0, atol=1e-6)

    reference_run, resumed_run = the_run(reference), the_run(resumed)
    assert resumed_run.info.run_id == run_id and resumed_run.info.status == "FINISHED"
    val_metrics = {k: v for k, v in reference_run.data.metrics.items() if k.startswith("val/")}
    assert "val/dice" in val_metrics and len(val_metrics) > 3
    assert {k: resumed_run.data.metrics[k] for k in val_metrics} == pytest.approx(val_metrics, abs=1e-6)
    for metric in ("val/dice", "train/loss"):  # every epoch, at the same steps (train/loss: the whole epoch's mean)
        histories = []
        for folder, run in ((reference, reference_run.info.run_id), (resumed, run_id)):
            client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
            histories.append({m.step: m.value for m in client.get_metric_history(run, metric)})
        assert len(histories[0]) == 3 and histories[1] == pytest.approx(histories[0], abs=1e-6), metric

    best = [p.name for p in (reference / "outputs").glob("*/*/checkpoints/best-*.ckpt")]
    assert best == [p.name for p in (resumed / "outputs").glob("*/*/checkpoints/best-*.ckpt")]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)  # set by trainer.deterministic


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread):
    data = write_dataset(tmp_path / "data", n=13)
    metrics = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        config = fault_config(data)
        config["trainer"]["max_epochs"] = 2
        monkeypatch.chdir(folder)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the first fit exported its store
        assert main(["fit", "--config", str(write_config(folder / "fit.yaml", config))]) == 0
        metrics.append(the_run(folder).data.metrics)
    assert metrics[0]["val/dice"] > 0 and metrics[0].keys() == metrics[1].keys()
    assert metrics[0] == metrics[1]  # exactly
