"""``segpipe fit FOLDER``: plan, write the plan into the run's folder, fit it, and log the plan to MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from builders import write_dataset

from segpipe.cli import main
from segpipe.planning.plan_yaml import read_plan


@pytest.mark.slow
def test_fit_folder_plans_fits_and_logs_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = write_dataset(tmp_path / "tiny", n=12)
    overrides = ["--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    assert main(["fit", str(data), "--dims", "2d", *overrides]) == 0

    plan_file, fingerprint_file = tmp_path / "outputs/tiny/plan.yaml", tmp_path / "outputs/tiny/fingerprint.json"
    config = read_plan(plan_file)
    assert config["trainer"]["default_root_dir"] == "outputs/tiny"
    assert fingerprint_file.is_file()
    experiment = config["trainer"]["logger"]["init_args"]["experiment_name"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.data.params["epochs"] == "2"  # the command line's override of the plan
    assert run.data.params["plan/dims"] == "2d"
    assert run.data.params["plan/network"].startswith("unet")
    assert run.data.params["plan/batch_size"] == str(config["data"]["init_args"]["batch_size"])
    logged = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plan")}
    assert logged == {"plan.yaml", "fingerprint.json"}
    assert run.data.metrics["memory/planned_bytes"] > 0
    assert run.data.metrics["time/actual_fit_s"] > 0
