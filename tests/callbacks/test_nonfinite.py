"""A NaN training loss stops the fit (exit 3) before the bad step, or is skipped with ``on_nonfinite: skip``."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import mlflow
import pytest
import torch
from builders import tiny_config, write_config
from torch.utils.data import DataLoader, TensorDataset

from segpipe.callbacks import NonFiniteGuard, ResumableCheckpoint
from segpipe.cli import main
from segpipe.io.checkpoints import safe_load
from segpipe.losses import SegmentationLoss
from segpipe.tasks.base import BaseTask


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def nan_loss_at(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """The ``calls``-th training loss (counted from 1) is NaN; validation losses are untouched."""
    original, seen = SegmentationLoss.forward, []

    def forward(self, logits, target):
        loss = original(self, logits, target)
        if torch.is_grad_enabled():
            seen.append(1)
            if len(seen) == calls:
                return loss * math.nan
        return loss

    monkeypatch.setattr(SegmentationLoss, "forward", forward)


def guarded_config(workdir: Path, data: Path) -> Path:
    config = tiny_config(data, checkpoint={"last_every_n_train_steps": 1}, model_logging={"enabled": False})
    config["data"]["init_args"]["batch_size"] = 2  # 6 training cases: 3 steps per epoch
    return write_config(workdir / "tiny.yaml", config)


def the_run(workdir: Path) -> mlflow.entities.Run:
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    return run


@pytest.mark.slow
def test_a_nan_loss_stops_training_with_exit_3_and_keeps_the_last_good_checkpoint(
    workdir: Path, flat_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    nan_loss_at(monkeypatch, calls=5)  # epoch 1, its second batch, after 4 good steps
    assert main(["fit", "--config", str(guarded_config(workdir, flat_dataset))]) == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segpipe: error:")]
    assert len(errors) == 1
    assert "non-finite training loss (nan) at epoch 1, step 4 (batch 2 of 3)" in errors[0]
    assert "last good checkpoint: outputs/" in errors[0] and "last.ckpt" in errors[0]
    checkpoints = list(Path("outputs").glob("*/*/checkpoints/*.ckpt"))
    assert {"last.ckpt"} < {c.name for c in checkpoints}
    for path in checkpoints:
        checkpoint = safe_load(path)
        assert checkpoint["global_step"] <= 4
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())
    assert safe_load(next(c for c in checkpoints if c.name == "last.ckpt"))["global_step"] == 4
    assert the_run(workdir).info.status == "FAILED"


@pytest.mark.slow
def test_skip_drops_the_nan_batch_counts_it_and_finishes(
    workdir: Path, flat_dataset: Path, monkeypatch: pytest.MonkeyPatch
):
    nan_loss_at(monkeypatch, calls=2)
    config = guarded_config(workdir, flat_dataset)
    assert main(["fit", "--config", str(config), "--nan_guard.on_nonfinite", "skip"]) == 0
    run = the_run(workdir)
    assert run.info.status == "FINISHED" and run.data.metrics["train/nonfinite_skipped"] == 1
    client = mlflow.MlflowClient()
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)  # the skipped batch is not in the mean
    (last,) = Path("outputs").glob("*/*/checkpoints/last.ckpt")
    weights = safe_load(last)["state_dict"].values()
    assert all(torch.isfinite(t).all() for t in weights if t.is_floating_point())


def test_a_model_with_nonfinite_weights_is_never_written(tmp_path: Path):
    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight[0, 1] = math.inf
    callback = ResumableCheckpoint(dirpath=str(tmp_path))
    with pytest.warns(UserWarning, match=r"not writing .*last\.ckpt: parameter weight is not finite"):
        callback._save_checkpoint(SimpleNamespace(lightning_module=module), str(tmp_path / "last.ckpt"))
    assert not list(tmp_path.iterdir())


class AlwaysNaN(BaseTask):
    monitor = "train/loss"

    def __init__(self) -> None:
        super().__init__(optimizer=lambda params: torch.optim.AdamW(params, lr=0.1, weight_decay=0.1))

    def configure_models(self) -> None:
        self.layer = torch.nn.Linear(3, 1)

    def configure_losses(self) -> None:
        self.scale = math.nan

    def configure_metrics(self) -> None:
        """No metrics: the tests look at the weights and the optimiser state."""

    def training_loss(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum() * self.scale


def test_a_skipped_batch_leaves_weights_and_optimiser_untouched():
    model, guard = AlwaysNaN(), NonFiniteGuard(on_nonfinite="skip")
    before = [p.detach().clone() for p in model.parameters()]
    data = DataLoader(TensorDataset(torch.ones(8, 3)), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[guard])
    with pytest.warns(UserWarning, match="batch skipped"):
        trainer.fit(model, data)
    assert guard.skipped == 4 and model.loss_checks == []  # the check is removed after the fit
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not trainer.optimizers[0].state  # AdamW never stepped: no moments, no weight decay


def test_off_leaves_the_step_unchecked():
    model, guard = AlwaysNaN(), NonFiniteGuard(on_nonfinite="off")
    data = DataLoader(TensorDataset(torch.ones(4, 3)), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[guard])
    trainer.fit(model, data)
    assert guard.skipped == 0 and trainer.optimizers[0].state  # both NaN steps were taken
    assert all(p.isnan().all() for p in model.parameters())
    with pytest.raises(ValueError, match="'stop', 'skip' or 'off'"):
        NonFiniteGuard(on_nonfinite="ignore")


def test_a_module_without_loss_checks_is_refused():
    plain = pl.LightningModule()
    with pytest.raises(TypeError, match="NonFiniteGuard needs a segpipe task"):
        NonFiniteGuard().setup(pl.Trainer(logger=False), plain, "fit")
