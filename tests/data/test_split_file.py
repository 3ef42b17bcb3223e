"""The case-level split of each run: written to its output folder and logged with the MLflow run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from builders import tiny_3d_config, write_volumes

from segpipe.cli import main


@pytest.mark.slow
def test_two_folds_are_two_runs_with_disjoint_val_cases_and_one_test_split(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_volumes(tmp_path / "data", n=8)
    config = tiny_3d_config(data)
    config["trainer"].update({"max_epochs": 1, "limit_train_batches": 1, "enable_progress_bar": False})
    config["data"]["init_args"].update({"fold": 0, "num_folds": 3, "split_seed": 5, "test_fraction": 0.2})
    (tmp_path / "folds.yaml").write_text(yaml.safe_dump(config))
    common = ["--test_after_fit", "false", "--model_logging.enabled", "false", "--overlays.every_n_epochs", "0"]
    for fold in (0, 1):  # the two runs differ in this one value
        assert main(["fit", "--config", "folds.yaml", "--data.init_args.fold", str(fold), *common]) == 0

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    records = {}
    for run in mlflow.search_runs(experiment_names=["tests3d"], output_format="list"):
        local = client.download_artifacts(run.info.run_id, "run/splits.yaml", str(tmp_path / run.info.run_id))
        record = yaml.safe_load(Path(local).read_text())
        [written] = Path("outputs").glob(f"*/{run.info.run_id}/splits.yaml")  # and in the run's output folder
        assert yaml.safe_load(written.read_text()) == record
        records[record["fold"]] = record
    assert sorted(records) == [0, 1]
    zero, one = records[0], records[1]
    assert zero["num_folds"] == one["num_folds"] == 3 and zero["split_seed"] == one["split_seed"] == 5
    assert zero["test"] == one["test"] and len(zero["test"]) == 2  # round(8 * 0.2)
    assert len(zero["val"]) == len(one["val"]) == 2 and not set(zero["val"]) & set(one["val"])
    for record in (zero, one):
        splits = [set(record[s]) for s in ("train", "val", "test")]
        assert sorted(set.union(*splits)) == [f"case_{i:02d}" for i in range(8)]
        assert sum(map(len, splits)) == 8  # no case in two splits
