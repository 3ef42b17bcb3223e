"""Local SQLite stores keep their experiments' artifacts beside their own database."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from segpipe.tracking.logger import MLflowLogger
from segpipe.tracking.store import local_artifact_location


def test_two_stores_whose_experiments_share_an_id_write_to_two_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    found = {}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        uri = f"sqlite:///{tmp_path / folder / 'mlflow.db'}"
        client = mlflow.MlflowClient(uri)
        experiment_id = client.create_experiment("tests", artifact_location=local_artifact_location(uri, "tests"))
        run = client.create_run(experiment_id)
        client.log_text(run.info.run_id, folder, "note.txt")
        client.set_terminated(run.info.run_id)
        found[folder] = (experiment_id, tmp_path / folder / "mlflow-artifacts" / "tests" / run.info.run_id)
    assert found["a"][0] == found["b"][0] == "1"  # the case that shared ./mlruns/1 before
    assert (found["a"][1] / "artifacts" / "note.txt").read_text() == "a"
    assert (found["b"][1] / "artifacts" / "note.txt").read_text() == "b"
    assert not (tmp_path / "mlruns").exists()  # MLflow's default, shared by every store run from this folder


def test_location_is_beside_the_database_and_only_for_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    expected = (tmp_path / "runs-artifacts" / "my_demo_2D").as_uri()
    assert local_artifact_location("sqlite:///runs.db", "my demo/2D") == expected  # relative to the cwd
    assert local_artifact_location(f"sqlite:///{tmp_path}/runs.db", "my demo/2D") == expected
    for uri in ("sqlite:///:memory:", "http://127.0.0.1:5000", "postgresql://mlflow@db/mlflow", "file:///x"):
        assert local_artifact_location(uri, "e") is None, uri


def test_the_logger_puts_a_new_experiments_artifacts_beside_its_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by mlflow.set_tracking_uri in other tests
    logger = MLflowLogger(experiment_name="tests", tracking_uri=f"sqlite:///{tmp_path / 's' / 'a.db'}")
    assert logger.run_id
    experiment = mlflow.MlflowClient(logger.tracking_uri).get_experiment(logger.experiment_id)
    assert experiment.artifact_location == (tmp_path / "s" / "a-artifacts" / "tests").as_uri()
