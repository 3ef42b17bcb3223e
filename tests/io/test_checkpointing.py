"""Checkpoint files: atomic writes, a full disk, unwritable folders, refused pickles, ``--ckpt_path last``."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from builders import tiny_config, write_config
from lightning.pytorch.callbacks import ModelCheckpoint

from segpipe.callbacks import ResumableCheckpoint
from segpipe.cli import main
from segpipe.errors import CheckpointError, ExportError, SegpipeError
from segpipe.export.checkpoint import load_checkpoint as export_load_checkpoint
from segpipe.io.checkpoints import AtomicCheckpointIO, check_checkpoint, safe_load
from segpipe.models.weights import read_state_dict
from segpipe.tracking.resume import last_checkpoint_in, last_checkpoint_of_experiment, run_info_from_checkpoint


class Payload:
    """Unpickling this creates ``marker``: the code a malicious checkpoint would run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def malicious(tmp_path: Path) -> tuple[Path, Path]:
    marker, path = tmp_path / "payload-ran", tmp_path / "shared.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}, "epoch": 0, "extra": Payload(marker)}, path)
    return path, marker


def errors_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("segpipe: error:")]


def test_a_pickled_payload_is_refused_by_every_loader_and_never_runs(malicious: tuple[Path, Path]):
    path, marker = malicious
    with pytest.raises(CheckpointError, match=r"shared\.ckpt: refused: .*io\.open"):
        check_checkpoint(path)
    for load in (safe_load, AtomicCheckpointIO().load_checkpoint, run_info_from_checkpoint):
        with pytest.raises(CheckpointError, match="refused"):
            load(path)
    with pytest.raises(SegpipeError, match=r"shared\.ckpt"):
        read_state_dict(path)  # encoder_weights
    with pytest.raises(ExportError, match="refused"):
        export_load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_the_cli_refuses_a_pickled_checkpoint_in_one_line(
    workdir: Path, flat_dataset: Path, malicious: tuple[Path, Path], subcommand: str, capsys
):
    path, marker = malicious
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    assert main([subcommand, "--config", str(config), "--ckpt_path", str(path)]) == 2
    (error,) = errors_in(capsys.readouterr().err)
    assert str(path) in error and "refused" in error and "io.open" in error
    assert not marker.exists() and not (workdir / "outputs").exists()


def test_a_truncated_checkpoint_is_refused(workdir: Path, flat_dataset: Path, capsys):
    path = workdir / "half.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    assert main(["fit", "--config", str(config), "--ckpt_path", str(path)]) == 2
    (error,) = errors_in(capsys.readouterr().err)
    assert "half.ckpt: not a readable torch checkpoint, truncated or corrupt" in error


def full_disk_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    """``torch.save`` to a file: the first ``writes`` succeed, later ones write half, then fail with ENOSPC."""
    real_save, done = torch.save, []

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, str | os.PathLike):
            return real_save(obj, f, *args, **kwargs)
        done.append(f)
        if len(done) <= writes:
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path, io = tmp_path / "checkpoints" / "last.ckpt", AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it
    full_disk_after(monkeypatch, writes=0)
    with pytest.raises(CheckpointError) as raised:
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert str(raised.value) == (
        f"cannot write checkpoint {path}: No space left on device (ENOSPC) (the previous checkpoint is kept)"
    )
    assert io.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


@pytest.mark.slow
def test_a_disk_full_during_fit_stops_with_exit_2_and_keeps_the_last_checkpoint(
    workdir: Path, flat_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    config = tiny_config(flat_dataset, checkpoint={"last_every_n_train_steps": 1}, model_logging={"enabled": False})
    config["data"]["init_args"]["batch_size"] = 2  # 3 steps per epoch
    path = write_config(workdir / "tiny.yaml", config)
    full_disk_after(monkeypatch, writes=2)  # last.ckpt at steps 1 and 2; then the epoch's best-*.ckpt fails
    assert main(["fit", "--config", str(path)]) == 2
    (error,) = errors_in(capsys.readouterr().err)
    assert error.startswith("segpipe: error: cannot write checkpoint outputs/") and "best-epoch000" in error
    assert error.endswith(": No space left on device (ENOSPC)")
    (last,) = Path("outputs").glob("*/*/checkpoints/last.ckpt")
    assert safe_load(last)["global_step"] == 2
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert run.info.status == "FAILED"


def test_an_unwritable_output_folder_is_refused_before_training(workdir: Path, flat_dataset: Path, capsys):
    (workdir / "a-file").write_text("not a folder")
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", "a-file/outputs"]) == 2
    (error,) = errors_in(capsys.readouterr().err)
    assert error == "segpipe: error: a-file/outputs: the output folder is not writable: Not a directory (ENOTDIR)"
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; ENOTDIR above covers it")
def test_a_read_only_output_folder_is_refused(workdir: Path, flat_dataset: Path, capsys):
    (workdir / "outputs").mkdir(mode=0o555)
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    assert main(["fit", "--config", str(config)]) == 2
    (error,) = errors_in(capsys.readouterr().err)
    assert "outputs: the output folder is not writable: Permission denied (EACCES)" in error


def touch_checkpoint(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_ckpt_path_last_is_the_newest_last_ckpt_of_the_configured_experiment(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    mine, other = client.create_experiment("mine"), client.create_experiment("other")
    root = tmp_path / "outputs"
    touch_checkpoint(root / mine / "run-a" / "checkpoints" / "last.ckpt", age_s=60)
    newest = touch_checkpoint(root / mine / "run-b" / "checkpoints" / "last.ckpt", age_s=30)
    touch_checkpoint(root / other / "run-c" / "checkpoints" / "last.ckpt", age_s=0)
    touch_checkpoint(root / mine / "run-d" / "checkpoints" / "best-epoch001.ckpt", age_s=0)
    assert last_checkpoint_of_experiment(root, "mine", uri) == str(newest)
    with pytest.warns(UserWarning, match="no checkpoint at .*training starts from scratch"):
        assert last_checkpoint_of_experiment(root, "never-run", uri) is None
    assert last_checkpoint_in(newest.parent) == str(newest)
    with pytest.warns(UserWarning, match="training starts from scratch"):
        assert last_checkpoint_in(tmp_path) is None


def test_ctrl_c_asks_for_a_clean_stop_and_a_second_one_stops_at_once(capsys):
    callback, trainer = ResumableCheckpoint(), SimpleNamespace(received_sigterm=False, world_size=1)
    original = signal.getsignal(signal.SIGINT)
    callback.on_train_start(trainer, None)
    try:
        assert callback._stop_signal(trainer) == 0
        os.kill(os.getpid(), signal.SIGINT)  # handled between two bytecodes of this thread
        assert callback._stop_signal(trainer) == signal.SIGINT
        assert "SIGINT: stopping after the current step and writing last.ckpt" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        callback.teardown(trainer, None, "fit")
    assert signal.getsignal(signal.SIGINT) is original
    assert ResumableCheckpoint()._stop_signal(SimpleNamespace(received_sigterm=True, world_size=1)) == signal.SIGTERM


def test_ckpt_path_last_is_required_outside_fit(workdir: Path, flat_dataset: Path, capsys):
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    assert main(["test", "--config", str(config), "--ckpt_path", "last"]) == 2
    (error,) = errors_in(capsys.readouterr().err)
    assert error.startswith("segpipe: error: --ckpt_path last: no checkpoint at outputs/") and "'tests'" in error


def test_checkpoints_of_a_plain_model_checkpoint_restore_into_resumable_checkpoint():
    options = {"monitor": "val/dice", "mode": "max", "save_last": True}
    assert ResumableCheckpoint(last_every_n_train_steps=5, **options).state_key == ModelCheckpoint(**options).state_key


def test_the_next_save_removes_the_temporary_file_of_a_killed_save(tmp_path: Path):
    path, io = tmp_path / "last.ckpt", AtomicCheckpointIO()
    killed = tmp_path / ".last.ckpt.4242-0a0b0c0d.tmp.ckpt"
    killed.write_bytes(b"PK\x03\x04 half a checkpoint")
    io.save_checkpoint({"step": torch.tensor(3)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["step"] == 3
