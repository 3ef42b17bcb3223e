"""End-to-end runs of the segpipe command on tiny generated data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from builders import tiny_config, write_config
from PIL import Image

from segpipe.cli import main


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.mark.slow
def test_fit_writes_checkpoints_and_an_mlflow_run_then_predicts(workdir: Path, flat_dataset: Path):
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    assert main(["fit", "--config", str(config)]) == 0

    checkpoints = sorted(Path("outputs").rglob("*.ckpt"))
    names = [c.name for c in checkpoints]
    assert "last.ckpt" in names and any(n.startswith("best-epoch") for n in names)

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert 0.0 <= run.data.metrics["val/dice"] <= 1.0
    assert "test/dice_pooled" in run.data.metrics and "val/dice_class1" in run.data.metrics
    assert run.data.params["depth"] == "2"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/dice")
    assert len(history) == 3
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "config" in artifacts and any(a.startswith("best-epoch") for a in artifacts)

    best = next(c for c in checkpoints if c.name.startswith("best-epoch"))
    out = workdir / "pred"
    args = ["predict", "--config", str(config), "--ckpt_path", str(best)]
    args += ["--data.predict_dir", str(flat_dataset / "images"), "--predict_writer.output_dir", str(out)]
    assert main(args) == 0
    inputs = sorted(p.stem for p in (flat_dataset / "images").glob("*.png"))
    assert sorted(p.stem for p in out.glob("*.png")) == inputs
    mask = np.asarray(Image.open(out / f"{inputs[0]}.png"))
    assert mask.shape == (37, 33) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}


def test_print_config_round_trip_reproduces_the_config(workdir: Path, flat_dataset: Path, capsys):
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.max_epochs", "7", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed)
    assert resolved["trainer"]["max_epochs"] == 7
    assert resolved["model"]["model_kwargs"] == {"depth": 2, "base_channels": 4}
    assert resolved["checkpoint"]["monitor"] == "val/dice"
    (workdir / "resolved.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(workdir / "resolved.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == resolved


def test_bad_data_is_refused_with_one_line_and_exit_2_before_any_run(workdir: Path, flat_dataset: Path):
    (flat_dataset / "masks" / "case_05.png").write_bytes(b"\x89PNG truncated")
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    proc = subprocess.run(
        [sys.executable, "-m", "segpipe.cli", "fit", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("segpipe: error:")]
    assert len(errors) == 1 and "case_05.png" in errors[0] and "cannot be decoded" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (workdir / "outputs").exists()
    if (workdir / "mlflow.db").exists():  # the logger may open the store, but no run may be created
        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_predict_without_checkpoint_is_refused(workdir: Path, flat_dataset: Path, capsys):
    config = write_config(workdir / "tiny.yaml", tiny_config(flat_dataset))
    args = ["predict", "--config", str(config), "--data.predict_dir", str(flat_dataset / "images")]
    assert main(args) == 2
    assert "--ckpt_path" in capsys.readouterr().err
