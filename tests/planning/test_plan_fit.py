"""The plan of a 2D folder is a complete fit config: read by the fit parser and trained for 2 steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segpipe.cli import main as segpipe_main
from segpipe.config import read_config
from segpipe.planning import dataset_fingerprint, plan_experiment


def test_the_plan_of_a_folder_is_read_by_the_fit_parser_and_trains(
    split_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    plan = plan_experiment(dataset_fingerprint(split_dataset), device_memory=2**30)
    config = plan.config
    assert config["model"]["num_classes"] == 3 and config["data"]["init_args"]["normalization"] == "dataset"
    config["trainer"].update(max_steps=2, limit_val_batches=1, enable_progress_bar=False, accelerator="cpu")
    config["trainer"]["logger"]["init_args"]["tracking_uri"] = "sqlite:///mlflow.db"
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(config))

    parsed = read_config(["--config", str(path)])
    assert parsed.model.model_kwargs == config["model"]["model_kwargs"]
    assert parsed.data.init_args.train_transforms == config["data"]["init_args"]["train_transforms"]

    assert segpipe_main(["fit", "--config", str(path)]) == 0
    assert list(tmp_path.rglob("*.ckpt"))  # the run's checkpoint
