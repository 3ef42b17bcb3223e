"""The logged model: loads in a fresh interpreter from its own copy of segpipe, carries linked metrics,
and is registered under the configured name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from segpipe.models import build_model
from segpipe.tracking.logger import MLflowLogger
from segpipe.tracking.model import link_metrics, log_network, pinned_requirements

LOAD = """
import json, sys
import mlflow.pytorch, torch
model = mlflow.pytorch.load_model(sys.argv[1])
logits = model(torch.zeros(2, 1, 37, 33))
print(json.dumps({"shape": list(logits.shape), "segpipe": sys.modules["segpipe"].__file__,
                  "weight": float(next(model.parameters()).flatten()[0])}))
"""


@pytest.fixture
def logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MLflowLogger:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return MLflowLogger(experiment_name="tests", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.slow  # a fresh interpreter imports torch and mlflow again (about 30 s on 2 cores)
def test_model_loads_in_a_fresh_interpreter_with_linked_metrics_and_registration(logger: MLflowLogger, tmp_path):
    torch.manual_seed(0)
    net = build_model("unet", 2, 1, 3, depth=2, base_channels=4).eval()
    example = torch.zeros(1, 1, 37, 33)
    with torch.no_grad():
        output = net(example)
    model_id = log_network(logger, net, example, output, registered_model_name="segpipe-tests")
    link_metrics(logger, {"val/dice_best": 0.75, "test/dice_mean_c1": 0.5}, 7, model_id)

    model = mlflow.MlflowClient().get_logged_model(model_id)
    assert model.source_run_id == logger.run_id
    assert {m.key: m.value for m in model.metrics} == {"val/dice_best": 0.75, "test/dice_mean_c1": 0.5}
    assert {m.step for m in model.metrics} == {7}
    run = mlflow.MlflowClient().get_run(logger.run_id)
    assert run.data.metrics["val/dice_best"] == 0.75  # the run holds them too
    versions = mlflow.MlflowClient().search_model_versions("name='segpipe-tests'")
    assert [(int(v.version), v.run_id) for v in versions] == [(1, logger.run_id)]

    # A fresh interpreter of this environment, given only the model's URI, from another folder: segpipe is
    # unpickled from the copy shipped with the model, not from this checkout.
    env = {"MLFLOW_TRACKING_URI": logger.tracking_uri, "PATH": "/usr/bin:/bin"}
    uri = f"runs:/{logger.run_id}/model"
    done = subprocess.run(
        [sys.executable, "-c", LOAD, uri], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["shape"] == [2, 3, 37, 33]
    assert loaded["weight"] == pytest.approx(float(next(net.parameters()).flatten()[0]))
    shipped = Path(loaded["segpipe"]).parent
    assert shipped.name == "segpipe" and shipped.parent.name == "code"  # <model>/code/segpipe/__init__.py
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt")).read_text().split()
    assert requirements == pinned_requirements()
    assert any(r.startswith("torch==") for r in requirements) and any(r.startswith("monai==") for r in requirements)
