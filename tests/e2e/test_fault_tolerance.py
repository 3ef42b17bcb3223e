"""Kill a real ``segpipe fit`` at several points, resume it each time with ``--ckpt_path last``: nothing changes.

The reference trains 3 epochs uninterrupted. The same training is then killed with SIGKILL after a step
checkpoint (mid-epoch), during validation and halfway through writing ``last.ckpt``, and resumed after
each; its final weights, optimiser state, validation metrics and curves equal the reference's, in one
MLflow run. Faults are injected at exact points by tests/fault_points.py. SIGTERM and SIGINT end a fit
after the current step with a fresh ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from builders import tiny_config, write_config, write_dataset

from segpipe.cli import main
from segpipe.tasks import SegmentationTask

FAULTS = Path(__file__).parents[1] / "fault_points.py"
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


def child_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(FAULTS.parent)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class Runs:
    """``segpipe`` runs forked from one ``fault_points.py --serve`` process, which imports segpipe once."""

    def __init__(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, str(FAULTS), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            text=True,
        )

    def __call__(self, workdir: Path, *args: str, fault: str | None = None) -> tuple[int, str]:
        """Run ``segpipe <args>`` in ``workdir`` (with a fault) and return its exit code and stderr."""
        log = workdir / f"stderr-{fault or 'run'}.txt"
        request = {"cwd": str(workdir), "args": list(args), "fault": fault, "stderr": str(log)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], 600)
        assert ready, f"segpipe {args} did not end within 600 s"
        return json.loads(self.server.stdout.readline())["returncode"], log.read_text()

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture
def runs():
    started = Runs()
    yield started
    started.close()


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
def test_killed_and_resumed_fit_ends_exactly_like_an_uninterrupted_one(tmp_path: Path, runs: Runs):
    data = write_dataset(tmp_path / "data", n=13)  # 3 validation cases, 10 training cases
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    for folder in (reference, resumed):
        folder.mkdir()
        write_config(folder / "fit.yaml", fault_config(data))
    fit = ("fit", "--config", "fit.yaml")
    with open(reference / "stderr.txt", "w") as stderr:  # the plain command, alongside the others (two cores)
        uninterrupted = subprocess.Popen(
            [sys.executable, "-m", "segpipe.cli", *fit], cwd=reference, env=child_env(), stderr=stderr
        )

    # SIGKILL as step 8 starts: last.ckpt is the step-6 checkpoint, in the middle of epoch 1.
    code, _ = runs(resumed, *fit, fault="kill-at-step:7")
    assert code == -signal.SIGKILL
    assert last_checkpoint(resumed)[1]["global_step"] == 6
    run_id = the_run(resumed).info.run_id

    # Resumed, then SIGKILL in epoch 1's validation: last.ckpt is the step-8 checkpoint.
    code, _ = runs(resumed, *fit, "--ckpt_path", "last", fault="kill-in-validation:1")
    assert code == -signal.SIGKILL
    assert last_checkpoint(resumed)[1]["global_step"] == 8

    # Resumed, then SIGKILL halfway through writing last.ckpt at step 12: the step-10 file (end of epoch 1)
    # is intact, and the half-written temporary file is all that is left of the new one.
    code, _ = runs(resumed, *fit, "--ckpt_path", "last", fault="kill-in-write:2")
    assert code == -signal.SIGKILL
    path, checkpoint = last_checkpoint(resumed)
    assert checkpoint["global_step"] == 2 * STEPS_PER_EPOCH and checkpoint["epoch"] == 1
    assert len(list(path.parent.glob(".last.ckpt.*.tmp*"))) == 1

    # Resumed from the end of epoch 1, to the end.
    code, stderr = runs(resumed, *fit, "--ckpt_path", "last")
    assert code == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not list(path.parent.glob(".last.ckpt.*.tmp*"))  # the next write of last.ckpt removed the stale file
    assert uninterrupted.wait(timeout=600) == 0, (reference / "stderr.txt").read_text()[-2000:]

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


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_ends_the_step_writes_last_ckpt_and_exits_128_plus_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = fault_config(write_dataset(tmp_path / "data", n=13))
    config["checkpoint"]["last_every_n_train_steps"] = 0  # only the signal writes last.ckpt inside the epoch
    original = SegmentationTask.training_step

    def training_step(self: SegmentationTask, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.global_step == 2 and batch_idx == 2:
            os.kill(os.getpid(), signum)  # as step 3 starts
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationTask, "training_step", training_step)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs in the background (nohup, &)
    assert main(["fit", "--config", str(write_config(tmp_path / "fit.yaml", config))]) == 128 + signum
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segpipe: error:")]
    assert len(errors) == 1 and f"stopped by {signal.Signals(signum).name} at epoch 0, step 3; last " in errors[0]
    path, checkpoint = last_checkpoint(tmp_path)
    assert f"checkpoint: {path.relative_to(tmp_path)}; resume with --ckpt_path last" in errors[0]
    assert checkpoint["global_step"] == 3 and checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": 3, "batch_size": 2}
    ]
    assert the_run(tmp_path).info.status == "FAILED"  # until it is resumed
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored after the fit
