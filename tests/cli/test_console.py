"""The terminal of a segpipe command: no logger prefixes, tips or known deprecations; a summary at the end."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import pytest
import torch
from builders import tiny_config, write_config

from segpipe.cli.run_summary import checkpoint_epoch, ui_command
from segpipe.console import configure_console, progress

NOISE = ("INFO:pytorch_lightning", "INFO:lightning", "litlogger", "LeafSpec", "always_return_as_numpy", "Total FLOPs")


@pytest.mark.slow
def test_a_short_fit_prints_no_noise_and_ends_with_the_summary(tmp_path: Path, flat_dataset: Path):
    config = tiny_config(flat_dataset)
    config["trainer"]["max_epochs"] = 2
    write_config(tmp_path / "tiny.yaml", config)
    proc = _segpipe(tmp_path, "fit", "--config", "tiny.yaml")
    printed = proc.stdout + proc.stderr
    assert [word for word in NOISE if word in printed] == []
    assert "FutureWarning" not in printed and "mlflow.pytorch: Saving pytorch model by Pickle" not in printed

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    (best,) = (tmp_path / "outputs").rglob("best-epoch*.ckpt")
    epoch, dice = re.fullmatch(r"best-epoch(\d+)-dice([\d.]+)\.ckpt", best.name).groups()
    test_key = "test/dice_pooled" if "test/dice_pooled" in run.data.metrics else "test/dice"
    test_line = f"segpipe: {test_key} {run.data.metrics[test_key]:.4f} (all test pixels pooled)"
    run_lines = [
        f"segpipe: MLflow run {run.info.run_id} in experiment tests",
        f"segpipe: open it with: mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    assert _summary(proc) == [
        f"segpipe: best val/dice {dice} at epoch {int(epoch)}",
        test_line,
        f"segpipe: checkpoint {best.relative_to(tmp_path)}",
        *run_lines,
    ]

    # segpipe test reports into the checkpoint's run, and names the checkpoint it tested
    proc = _segpipe(tmp_path, "test", "--config", "tiny.yaml", "--ckpt_path", str(best))
    assert _summary(proc) == [test_line, f"segpipe: checkpoint {best}", *run_lines]


def _segpipe(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the segpipe command as a user does (a new process: its logging and warnings start unset)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_LOGGING_LEVEL")}
    command = [sys.executable, "-m", "segpipe.cli", *args]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600, env=environment)
    assert proc.returncode == 0, proc.stderr
    return proc


def _summary(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The end-of-run summary lines (the other ``segpipe:`` lines are information during the run)."""
    summary_starts = ("segpipe: best ", "segpipe: test/", "segpipe: checkpoint ", "segpipe: MLflow ", "segpipe: open ")
    return [line for line in proc.stdout.splitlines() if line.startswith(summary_starts)]


def test_the_ui_command_opens_a_local_store_and_links_a_server_run():
    assert (
        ui_command("sqlite:////data/mlflow.db", "3", "abc") == "mlflow ui --backend-store-uri sqlite:////data/mlflow.db"
    )
    assert ui_command("http://tracking:5000/", "3", "abc") == "http://tracking:5000/#/experiments/3/runs/abc"


def test_the_epoch_is_read_from_a_checkpoint_and_left_out_when_it_cannot_be(tmp_path: Path):
    torch.save({"epoch": 7, "state_dict": {"w": torch.zeros(3)}}, tmp_path / "best.ckpt")
    (tmp_path / "broken.ckpt").write_bytes(b"PK truncated")
    assert checkpoint_epoch(str(tmp_path / "best.ckpt")) == 7
    assert checkpoint_epoch(str(tmp_path / "broken.ckpt")) is None
    assert checkpoint_epoch("s3://bucket/run/best.ckpt") is None


def test_only_the_named_messages_of_the_named_loggers_are_silenced():
    configure_console()
    tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger"
    pip = "Failed to resolve installed pip version. ``pip`` will be added without a version specifier."
    assert not _passes("lightning.pytorch.utilities.rank_zero", tip)
    assert not _passes("pytorch_lightning.utilities.rank_zero", tip)
    assert _passes("lightning.pytorch.utilities.rank_zero", "GPU available: False, used: False")
    assert not _passes("mlflow.utils.environment", pip)
    assert _passes("mlflow.utils.environment", "Failed to infer the requirements")
    assert _passes("segpipe.data", pip)


def test_records_print_once_without_logger_prefixes(capsys):
    configure_console()
    configure_console()  # a second call adds no second handler
    logger = logging.getLogger("segpipe.tests.console")
    logger.warning("case_05.png is empty")
    logger.info("below the root level")
    assert capsys.readouterr().err == "warning: case_05.png is empty\n"


def test_deprecations_are_silenced_only_where_they_are_raised():
    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_console()
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="segpipe.mine")
        warnings.warn_explicit(message, UserWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
    assert [(w.filename, w.category) for w in caught] == [("mine.py", FutureWarning), ("_pytree.py", UserWarning)]


def _passes(logger_name: str, message: str) -> bool:
    """Whether the logger's own filters let ``message`` through."""
    logger = logging.getLogger(logger_name)
    return bool(logger.filter(logger.makeRecord(logger_name, logging.WARNING, __file__, 1, message, (), None)))


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_shows_a_bar_only_on_a_terminal(terminal: bool, capsys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")  # Rich's override of isatty()
    assert list(progress(iter(range(5)), 5, "caching preprocessed volumes")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert ("caching preprocessed volumes" in err) is terminal
    assert terminal or err == ""


@pytest.fixture(autouse=True)
def _restore_logging_and_warnings():
    """configure_console changes the process's root logger; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with warnings.catch_warnings():
        yield
    root.handlers[:] = handlers
    root.setLevel(level)
